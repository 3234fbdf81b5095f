"""`python -m services.orders`: the orders service on :50052 (admin :9102) by default."""

from mesh.server import run_service
from services.orders.app import build


def main() -> None:
    run_service("orders", build, grpc_port=50052, admin_port=9102)


if __name__ == "__main__":
    main()
