from infermeter.kernel.tenancy import (
    SECRET_HEADER,
    TAGS_HEADER,
    TENANT_HEADER,
    KeyEntry,
    TenantResolver,
    hash_key,
    parse_tags,
)


def resolver() -> TenantResolver:
    return TenantResolver("s3cret", {hash_key("sk-a"): KeyEntry("acme", "key-1", "gold")})


def test_trusted_header_needs_the_shared_secret() -> None:
    r = resolver()
    ok = r.resolve({TENANT_HEADER: "globex", SECRET_HEADER: "s3cret"})
    assert (ok.tenant, ok.source, ok.untrusted_header) == ("globex", "trusted_header", False)
    bad = r.resolve({TENANT_HEADER: "globex", SECRET_HEADER: "wrong"})
    assert (bad.tenant, bad.untrusted_header) == ("anonymous", True)


def test_api_key_maps_to_tenant_and_untrusted_header_is_flagged() -> None:
    got = resolver().resolve({"authorization": "Bearer sk-a", TENANT_HEADER: "evil"})
    assert (got.tenant, got.key_id, got.tier, got.source) == ("acme", "key-1", "gold", "api_key")
    assert got.untrusted_header
    assert resolver().resolve({"authorization": "Bearer nope"}).source == "anonymous"


def test_no_secret_configured_never_trusts_the_header() -> None:
    r = TenantResolver("", {})
    assert r.resolve({TENANT_HEADER: "x", SECRET_HEADER: ""}).tenant == "anonymous"


def test_tags_are_parsed_and_bounded() -> None:
    assert parse_tags("feature=search, team=core,bad,=x") == {"feature": "search", "team": "core"}
    many = ",".join(f"k{i}=v" for i in range(20))
    assert len(parse_tags(many)) == 8
    assert parse_tags("k=" + "v" * 65) == {}
    got = resolver().resolve({"authorization": "Bearer sk-a", TAGS_HEADER: "feature=chat"})
    assert got.tags == {"feature": "chat"}
