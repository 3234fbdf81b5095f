"""`python -m services.inventory`: the inventory service on :50053 (admin :9103) by default."""

from mesh.server import run_service
from services.inventory.app import build


def main() -> None:
    run_service("inventory", build, grpc_port=50053, admin_port=9103)


if __name__ == "__main__":
    main()
