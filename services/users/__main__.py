"""`python -m services.users`: the users service on :50051 (admin :9101) by default."""

from mesh.server import run_service
from services.users.app import build


def main() -> None:
    run_service("users", build, grpc_port=50051, admin_port=9101)


if __name__ == "__main__":
    main()
