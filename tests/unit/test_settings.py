import pytest

from mesh.settings import Settings, SettingsError


def test_defaults_without_environment():
    s = Settings.from_env("orders", {}, grpc_port=50052)
    assert s.grpc_port == 50052
    assert s.registry == "embedded"
    assert s.instance_id.startswith("orders-")


def test_consul_chosen_when_address_set():
    s = Settings.from_env("orders", {"CONSUL_HTTP_ADDR": "127.0.0.1:8500"})
    assert s.registry == "consul"


def test_service_database_url_variable():
    s = Settings.from_env("orders", {"ORDERS_DATABASE_URL": "postgresql://x/y"})
    assert s.database_url == "postgresql://x/y"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MESH_GRPC_PORT", "70000"),
        ("MESH_GRPC_PORT", "abc"),
        ("MESH_DEFAULT_DEADLINE_S", "-1"),
        ("MESH_RETRY_BUDGET_RATIO", "2"),
        ("MESH_LB_POLICY", "random"),
        ("MESH_REGISTRY", "zookeeper"),
    ],
)
def test_malformed_setting_names_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env("orders", {var: value})


def test_consul_registry_needs_address():
    with pytest.raises(SettingsError, match="CONSUL_HTTP_ADDR"):
        Settings.from_env("orders", {"MESH_REGISTRY": "consul"})
