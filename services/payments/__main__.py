"""`python -m services.payments`: the payments service on :50054 (admin :9104) by default."""

from mesh.server import run_service
from services.payments.app import build


def main() -> None:
    run_service("payments", build, grpc_port=50054, admin_port=9104)


if __name__ == "__main__":
    main()
