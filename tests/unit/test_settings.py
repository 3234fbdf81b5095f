import pytest

from base.settings import default_of, specs
from interceptors.retry import RetryPolicy
from mesh.balancer.outlier import OutlierConfig
from mesh.client.connect import ClientOptions
from mesh.settings import ResilienceSettings, Settings, SettingsError


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
        ("MESH_RETRY_INITIAL_BACKOFF_S", "0"),
        ("MESH_OUTLIER_MAX_EJECTED_FRACTION", "1.5"),
    ],
)
def test_malformed_setting_names_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env("orders", {var: value})


def test_consul_registry_needs_address():
    with pytest.raises(SettingsError, match="CONSUL_HTTP_ADDR"):
        Settings.from_env("orders", {"MESH_REGISTRY": "consul"})


def test_retry_backoff_is_read_from_the_environment():
    s = Settings.from_env(
        "orders", {"MESH_RETRY_INITIAL_BACKOFF_S": "0.2", "MESH_RETRY_MAX_BACKOFF_S": "3"}
    )
    assert s.resilience.retry_initial_backoff_s == 0.2
    assert s.resilience.retry_max_backoff_s == 3.0


def test_blank_variable_keeps_the_default():
    s = Settings.from_env("orders", {"MESH_DRAIN_GRACE_S": "  ", "MESH_HOST": ""})
    assert s.drain_grace_s == default_of(Settings, "drain_grace_s")
    assert s.host == default_of(Settings, "host")


def test_advertise_host_follows_host():
    assert Settings.from_env("orders", {"MESH_HOST": "10.0.0.7"}).advertise_host == "10.0.0.7"
    s = Settings.from_env("orders", {"MESH_HOST": "0.0.0.0", "MESH_ADVERTISE_HOST": "a.b"})
    assert s.advertise_host == "a.b"


def test_error_message_names_variable_value_and_rule():
    with pytest.raises(SettingsError) as err:
        Settings.from_env("orders", {"MESH_BREAKER_FAILURE_RATE": "1.5"})
    assert str(err.value) == (
        "MESH_BREAKER_FAILURE_RATE='1.5' is invalid: must be a number above 0 and at most 1"
    )


def test_every_setting_is_read_from_its_variable():
    """Each declared variable reaches its field (a field added without a variable, or a
    variable misspelt in from_env, fails here)."""
    for cls, target in ((Settings, None), (ResilienceSettings, "resilience")):
        for f, spec in specs(cls):
            want: object
            if spec.env == "<SERVICE>_DATABASE_URL":
                name, raw, want = "ORDERS_DATABASE_URL", "postgresql://h/db", "postgresql://h/db"
            else:
                name = spec.env
                raw, want = _valid_other_than(f.default, spec.parse.rule)
            env = {name: raw}
            if spec.env == "MESH_REGISTRY":
                env["CONSUL_HTTP_ADDR"] = "127.0.0.1:8500"
            s = Settings.from_env("orders", env)
            holder = s if target is None else getattr(s, target)
            assert getattr(holder, f.name) == want, spec.env


def _valid_other_than(default: object, rule: str) -> tuple[str, object]:
    if rule.startswith("one of "):
        options = rule.removeprefix("one of ").split(", ")
        other = next(o for o in options if o != default)
        return other, other
    if isinstance(default, bool) or not isinstance(default, int | float):
        return "x-value", "x-value"
    if isinstance(default, int):
        return str(default + 1), default + 1
    value = default / 2
    return repr(value), value


def test_client_and_outlier_defaults_are_the_settings():
    d = ResilienceSettings()
    opts = ClientOptions()
    assert (opts.lb_policy, opts.no_instance_wait_s) == (d.lb_policy, d.default_deadline_s)
    assert opts.outlier == OutlierConfig()
    assert OutlierConfig() == OutlierConfig(
        consecutive_failures=d.outlier_consecutive_failures,
        base_ejection_s=d.outlier_base_ejection_s,
        max_ejection_s=d.outlier_max_ejection_s,
        max_ejected_fraction=d.outlier_max_ejected_fraction,
    )
    assert ClientOptions.from_settings(d) == opts
    assert d.retry_max_attempts == RetryPolicy().max_attempts
