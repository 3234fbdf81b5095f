"""services.common: money, page tokens, field checks, cards, service settings."""

from __future__ import annotations

import base64
import json
import stat
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest
from shop.common.v1 import money_pb2

from base.errors import InvalidArgument, Violations
from mesh.security.store import SERVICE_SECRET_FILE, PkiStore
from mesh.settings import SecuritySettings, SettingsError
from services.common.cards import CardInput, card_number_field, cvc_field, expiry_fields, luhn_ok
from services.common.money import (
    MAX_AMOUNT_MINOR,
    Amount,
    CurrencyMismatch,
    MoneyError,
    MoneyOverflow,
    total,
)
from services.common.pagination import (
    PageTokenError,
    decode_page_token,
    encode_page_token,
    set_key,
)
from services.common.secrets import Secret, derive_key, service_key
from services.common.validation import (
    has_control_chars,
    has_format_chars,
    money_field,
    page_size_field,
    page_token_field,
    printable,
    text_field,
    unique_ids,
    uuid_field,
)
from services.inventory.config import InventoryConfig
from services.orders.config import OrdersConfig
from services.payments.config import PaymentsConfig
from services.users.config import UsersConfig


def violations(check: object) -> dict[str, str]:
    assert isinstance(check, Violations)
    return {v.field: v.description for v in check.items}


# -- money -------------------------------------------------------------------------


def test_amount_arithmetic_is_checked() -> None:
    price = Amount("USD", 1999)
    assert price.times(3) + Amount("USD", 3) == Amount("USD", 6000)
    assert str(Amount("USD", -1999)) == "-19.99 USD" and str(Amount("JPY", 500)) == "500 JPY"
    assert total([price, price], "USD") == Amount("USD", 3998)
    assert total([], "EUR") == Amount.zero("EUR")
    assert Amount.from_proto(price.to_proto()) == price
    with pytest.raises(MoneyOverflow):
        Amount("USD", MAX_AMOUNT_MINOR).times(2)
    with pytest.raises(MoneyOverflow):
        Amount("USD", MAX_AMOUNT_MINOR) + Amount("USD", 1)
    with pytest.raises(CurrencyMismatch):
        price + Amount("EUR", 1)
    with pytest.raises(MoneyError):
        Amount("XXX", 1)
    with pytest.raises(MoneyOverflow):
        Amount("USD", 2**63 - 1)


# -- page tokens ------------------------------------------------------------------------


def test_page_tokens_round_trip_and_reject_anything_else() -> None:
    token = encode_page_token("inventory.products", {"sku": "B-2", "n": 3})
    assert decode_page_token("inventory.products", token) == {"sku": "B-2", "n": 3}
    with pytest.raises(PageTokenError, match="another listing"):
        decode_page_token("orders", token)

    def forged(body: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")

    for bad in [
        "!!!",
        "x" * 2000,
        forged([1, 2]),
        forged({"v": 2, "k": "inventory.products", "c": {}}),
        forged({"v": 1, "k": "inventory.products", "c": {"sku": True}}),
        forged({"v": 1, "k": "inventory.products", "c": {"sku": [1]}}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ]:
        with pytest.raises(PageTokenError):
            decode_page_token("inventory.products", bad)


def test_page_tokens_are_signed_with_the_services_key() -> None:
    set_key(derive_key(Secret("a test secret of the shop"), "inventory", "page-token"))
    token = encode_page_token("inventory.products", {"sku": "B-2", "t": 2**63 - 1})
    body, _, tag = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))

    def signed_elsewhere(content: object) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(content).encode()).decode().rstrip("=")
        return f"{raw}.{tag}"

    for bad in [
        body,  # no tag
        f"{body}.",
        f"{body}.{tag[:-2]}",
        f"{body}x.{tag}",
        signed_elsewhere({**payload, "c": {"sku": "A-1", "t": 1}}),
        "." + tag,
        f"{body}.{tag}\u00e9",
    ]:
        with pytest.raises(PageTokenError):
            decode_page_token("inventory.products", bad)
    # Another secret (another mesh, another service): not this service's token.
    set_key(derive_key(Secret("a test secret of the shop"), "orders", "page-token"))
    with pytest.raises(PageTokenError, match="not one this service issued"):
        decode_page_token("inventory.products", token)
    # A cursor beyond int64 is refused even when signed (a database would fail on it).
    huge = encode_page_token("inventory.products", {"t": 2**70})
    with pytest.raises(PageTokenError, match="malformed"):
        decode_page_token("inventory.products", huge)


def test_service_keys_come_from_the_shared_secret(tmp_path: Path) -> None:
    env = {"MESH_SERVICE_SECRET": "s" * 32}
    assert service_key("orders", "page-token", env) == service_key("orders", "page-token", env)
    assert service_key("orders", "page-token", env) != service_key("inventory", "page-token", env)
    # Unset, no shared file: random per process (two calls, two keys); too short: refused,
    # value not shown.
    bare = {"MESH_PKI_DIR": str(tmp_path / "none")}
    assert service_key("orders", "page-token", bare) != service_key("orders", "page-token", bare)
    with pytest.raises(SettingsError) as err:
        service_key("orders", "page-token", {"MESH_SERVICE_SECRET": "short-secret"})
    assert "short-secret" not in str(err.value)
    assert "short" not in repr(Secret("short-secret"))


def test_a_page_token_with_its_tag_text_altered_is_refused_even_if_it_decodes_alike() -> None:
    """Base64 ignores the unused low bits of a last character ('A' and 'B' can decode to
    the same bytes): the tag is compared as text, so no altered spelling passes."""
    token = encode_page_token("inventory.products", {"t": 1})
    body, _, tag = token.partition(".")
    for last in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        if last == tag[-1]:
            continue
        with pytest.raises(PageTokenError):
            decode_page_token("inventory.products", f"{body}.{tag[:-1]}{last}")
    assert decode_page_token("inventory.products", token) == {"t": 1}


def test_instances_sharing_a_pki_directory_share_the_secret_pki_init_wrote(
    tmp_path: Path,
) -> None:
    store = PkiStore(SecuritySettings(pki_dir=str(tmp_path / "pki")))
    store.ensure_dir()
    assert store.ensure_service_secret() is True
    assert store.ensure_service_secret() is False  # kept, never replaced
    path = tmp_path / "pki" / SERVICE_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = {"MESH_PKI_DIR": str(tmp_path / "pki")}
    # Two instances (two calls) derive the same key; MESH_SERVICE_SECRET still wins.
    assert service_key("orders", "page-token", env) == service_key("orders", "page-token", env)
    assert service_key("orders", "page-token", env) == derive_key(
        Secret(path.read_text()), "orders", "page-token"
    )
    own = {**env, "MESH_SERVICE_SECRET": "o" * 32}
    assert service_key("orders", "page-token", own) != service_key("orders", "page-token", env)


# -- field checks -------------------------------------------------------------------------


def test_uuid_field_is_canonical_and_lower_case() -> None:
    v = Violations()
    assert uuid_field(v, "id", "123E4567-E89B-12D3-A456-426614174000") == (
        "123e4567-e89b-12d3-a456-426614174000"
    )
    for i, bad in enumerate([
        "123e4567e89b12d3a456426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "123e4567-e89b-12d3-a456-426614174000\n",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
    ]):  # fmt: skip
        assert uuid_field(v, f"id{i}", bad) == ""
    assert uuid_field(v, "missing", "") == ""
    assert uuid_field(v, "optional", "", required=False) == ""
    assert set(violations(v)) == {"id0", "id1", "id2", "id3", "missing"}


def test_text_field() -> None:
    v = Violations()
    assert text_field(v, "a", "  Ada  ", max_len=10) == "Ada"
    text_field(v, "blank", "   ", max_len=10)
    text_field(v, "long", "x" * 11, max_len=10)
    text_field(v, "nul", "a\x00b", max_len=10)
    text_field(v, "newline", "a\nb", max_len=10)
    text_field(v, "line_separator", "a\u2028b", max_len=10)  # a newline by another name
    text_field(v, "paragraph_separator", "a\u2029b", max_len=10)
    assert text_field(v, "empty_ok", "", min_len=0, max_len=10) == ""
    assert text_field(v, "emoji", "🙂 ok", max_len=10) == "🙂 ok"
    text_field(v, "bidi", "moc\u202egoogle", max_len=20)
    text_field(v, "zero_width", "Ada\u200bLovelace", max_len=20)
    text_field(v, "isolate", "\u2066x\u2069", max_len=20)
    text_field(v, "bom", "\ufeffAda", max_len=20)
    assert set(violations(v)) == {
        "blank", "long", "nul", "newline", "bidi", "zero_width", "isolate", "bom",
        "line_separator", "paragraph_separator",
    }  # fmt: skip
    assert "format characters" in violations(v)["bidi"]


def test_printable_text_passes_the_text_field_it_is_given_to() -> None:
    """An upstream's multi-line error, passed on as an undo's reason, is accepted."""
    for raw in ("step failed:\n(sqlite3.OperationalError) locked\r\n", "x\u202ey\x00", "é" * 600):
        v = Violations()
        reason = text_field(v, "reason", printable(raw, 500), min_len=0, max_len=500)
        assert not violations(v), raw
        assert len(reason) <= 500
    assert printable("plain", 500) == "plain" and printable("a\nb", 2) == "a "


def test_ascii_text_is_judged_as_the_unicode_categories_judge_it() -> None:
    """The C check of ASCII text agrees with the per-character categories, character by
    character and inside longer text (DEL and the C0 controls are the controls)."""
    for code in range(128):
        ch = chr(code)
        controls = unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"}
        assert has_control_chars(ch) is controls, repr(ch)
        assert has_control_chars(f"ab{ch}cd") is controls, repr(ch)
        assert has_format_chars(f"ab{ch}cd") is (unicodedata.category(ch) == "Cf")
    assert not has_control_chars("")
    assert has_control_chars("é\x7f") and has_control_chars("é\x85")  # C1 outside ASCII
    assert has_format_chars("é\u200d") and not has_format_chars("é")


def test_money_field() -> None:
    def check(money: money_pb2.Money | None, **kw: bool) -> dict[str, str]:
        v = Violations()
        money_field(v, "price", money or money_pb2.Money(), present=money is not None, **kw)
        return violations(v)

    assert check(money_pb2.Money(currency_code="JPY", amount_minor=1)) == {}
    assert set(check(None)) == {"price"}
    assert set(check(money_pb2.Money(currency_code="usd", amount_minor=0))) == {
        "price.currency_code", "price.amount_minor"}  # fmt: skip
    assert set(check(money_pb2.Money(currency_code="XYZ", amount_minor=-1))) == {
        "price.currency_code", "price.amount_minor"}  # fmt: skip
    assert set(check(money_pb2.Money(currency_code="USD", amount_minor=2**63 - 1))) == {
        "price.amount_minor"}  # fmt: skip
    assert check(money_pb2.Money(currency_code="USD"), allow_zero=True) == {}


def test_page_size_and_token_and_unique_ids() -> None:
    v = Violations()
    assert page_size_field(v, "page_size", 0) == 50
    assert page_size_field(v, "page_size", 100) == 100
    page_size_field(v, "too_big", 101)
    page_size_field(v, "negative", -1)
    assert page_token_field(v, "t0", "x", "") is None
    assert page_token_field(v, "t1", "x", encode_page_token("x", {"k": "v"})) == {"k": "v"}
    page_token_field(v, "t2", "x", "garbage")
    unique_ids(v, "items[{}].product_id", ["a", "b", "a", "", ""])
    assert set(violations(v)) == {"too_big", "negative", "t2", "items[2].product_id"}
    with pytest.raises(InvalidArgument) as err:
        v.raise_if_any()
    assert len(err.value.violations) == 4


# -- cards ----------------------------------------------------------------------------------


def test_cards() -> None:
    assert luhn_ok("4242424242424242") and not luhn_ok("4242424242424241")
    v = Violations()
    assert card_number_field(v, "n", "4242 4242-4242 4242") == "4242424242424242"
    for i, bad in enumerate(
        ["", "4242424242424241", "42424242", "4242\uff14\uff1242424242", "abc"]
    ):
        assert card_number_field(v, f"n{i}", bad) == ""
    assert all(bad not in d for d in violations(v).values() for bad in ("4242424242424241",))
    assert set(violations(v)) == {"n0", "n1", "n2", "n3", "n4"}

    now = datetime(2030, 6, 15, tzinfo=UTC)
    cases = {(6, 2030): set(), (5, 2030): {"c.exp_year"}, (13, 2031): {"c.exp_month"},
             (1, 99): {"c.exp_year"}, (1, 2081): {"c.exp_year"}}  # fmt: skip
    for (month, year), fields in cases.items():
        v = Violations()
        expiry_fields(v, "c", month, year, now=now)
        assert set(violations(v)) == fields, (month, year)

    v = Violations()
    assert cvc_field(v, "a", "123") == "123" and cvc_field(v, "b", "1234") == "1234"
    for i, bad in enumerate(["", "12", "12345", "12a", "\uff11\uff12\uff13"]):
        cvc_field(v, f"c{i}", bad)
    assert len(v.items) == 5

    card = CardInput("4242424242424242", 12, 2030, "123")
    assert card.last4 == "4242"
    assert "4242424242424242" not in repr(card) and "123" not in str(card).replace("2030", "")


# -- settings --------------------------------------------------------------------------------


def test_service_settings_from_env() -> None:
    env = {
        "ORDERS_CALL_TIMEOUT_S": " 1.5 ",
        "ORDERS_SQLITE_BUSY_TIMEOUT_MS": "7",
        "USERS_PASSWORD_PROFILE": "cheapest",
        "INVENTORY_LOW_STOCK_THRESHOLD": "",
    }
    orders = OrdersConfig.from_env(env)
    assert orders.call_timeout_s == 1.5 and orders.sqlite_busy_timeout_ms == 7
    assert orders.saga_lease_s == OrdersConfig().saga_lease_s
    assert UsersConfig.from_env(env).password_profile == "cheapest"
    assert InventoryConfig.from_env(env) == InventoryConfig()  # blank: the default


@pytest.mark.parametrize(
    ("read", "var", "value"),
    [
        (PaymentsConfig.from_env, "PAYMENTS_SLOW_CARD_DELAY_S", "nan"),
        (PaymentsConfig.from_env, "PAYMENTS_STALE_CLAIM_S", "0.5"),
        (OrdersConfig.from_env, "ORDERS_SQLITE_BUSY_TIMEOUT_MS", "many"),
        (InventoryConfig.from_env, "INVENTORY_LOW_STOCK_THRESHOLD", "-1"),
        (UsersConfig.from_env, "USERS_PASSWORD_PROFILE", "md5"),
    ],
)
def test_malformed_service_setting_names_the_variable(read, var, value) -> None:
    with pytest.raises(SettingsError, match=f"^{var}="):
        read({var: value})
