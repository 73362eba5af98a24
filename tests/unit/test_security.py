"""Password files, topic ACLs and trial certificates; the CLI that makes them. No network."""

import io
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from fedmq.broker import BrokerConfig
from fedmq.cli.main import main
from fedmq.errors import ConfigError
from fedmq.security import (
    READ,
    WRITE,
    PasswordFile,
    fedmq_acl,
    hash_password,
    parse_acl,
    set_password,
    verify_password,
)
from fedmq.security.acl import filter_covers, topic_matches
from fedmq.security.certs import make_trial_pki
from fedmq.transport import Session, SessionConfig

pytestmark = pytest.mark.unit

CONFIGS = Path(__file__).parents[2] / "src/fedmq/broker/configs"


def mosquitto_passwd() -> str:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.fail("mosquitto_passwd is not installed: apt-get install -y mosquitto")
    return binary


# --- passwords -----------------------------------------------------------------------------


def test_hash_is_mosquitto_pbkdf2_and_verifies_only_the_right_password() -> None:
    encoded = hash_password("s3cret", iterations=1000)
    _, kind, iterations, salt, digest = encoded.split("$")
    assert (kind, iterations, len(salt), len(digest)) == ("7", "1000", 16, 88)
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)
    assert hash_password("s3cret") != hash_password("s3cret")  # salted


@pytest.mark.mosquitto
@pytest.mark.parametrize("algorithm", ["sha512-pbkdf2", "sha512"])
def test_reads_a_file_made_by_mosquitto_passwd(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "passwd"
    subprocess.run([mosquitto_passwd(), "-H", algorithm, "-c", "-b", str(path), "edge-0",
                    "pa:ss wörd"], check=True)  # fmt: skip
    assert path.read_text().startswith("edge-0:$7$" if algorithm != "sha512" else "edge-0:$6$")
    pw = PasswordFile(path)
    assert pw.users == ["edge-0"]
    assert pw.verify("edge-0", "pa:ss wörd")
    assert not pw.verify("edge-0", "pa:ss word")
    assert not pw.verify("edge-1", "pa:ss wörd")


def test_set_password_adds_updates_deletes_and_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert not set_password(path, "edge-0", "one", iterations=10)
    assert not set_password(path, "edge-1", "two", iterations=10)
    assert set_password(path, "edge-0", "uno", iterations=10)
    text = path.read_text()
    assert "one" not in text and "uno" not in text  # no plaintext at rest
    assert [line.split(":")[0] for line in text.splitlines()] == ["edge-0", "edge-1"]
    assert path.stat().st_mode & 0o777 == 0o600
    pw = PasswordFile(path)
    assert pw.verify("edge-0", "uno") and not pw.verify("edge-0", "one")
    set_password(path, "edge-1", None)
    assert PasswordFile(path).users == ["edge-0"]
    with pytest.raises(ConfigError, match="no user 'edge-1'"):
        set_password(path, "edge-1", None)


def test_password_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    set_password(path, "edge-0", "a", iterations=10)
    pw = PasswordFile(path)
    assert not pw.verify("edge-1", "b")
    set_password(path, "edge-1", "b", iterations=10)
    assert pw.verify("edge-1", "b")
    path.write_text("garbage\n")  # a bad edit keeps the last good file in force
    assert pw.verify("edge-1", "b")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("edge-0", r"passwd:3: expected USER:HASH"),
        ("edge-0:$7$abc$AAAA$AAAA", r"passwd:3: user 'edge-0': bad password hash"),
        ("edge-0:$7$10$AAAA$AAAA", r"passwd:3: user 'edge-0': .*64"),
        ("edge-0:plaintext", r"passwd:3: user 'edge-0': bad password hash"),
        ("ok:" + hash_password("x", iterations=1), r"passwd:3: user 'ok' appears twice"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_line_and_user(
    tmp_path: Path, line: str, error: str
) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# devices\nok:{hash_password('x', iterations=1)}\n{line}\n")
    with pytest.raises(ConfigError, match=error):
        PasswordFile(path)


@pytest.mark.parametrize("user", ["", "a:b", "a/b", "edge+", "#", "a b", "tab\t"])
def test_usernames_must_be_single_topic_levels(tmp_path: Path, user: str) -> None:
    with pytest.raises(ConfigError, match="username"):
        set_password(tmp_path / "passwd", user, "x")


# --- ACL ------------------------------------------------------------------------------------

ACL = parse_acl(fedmq_acl("hq"), "test")
J = "fedmq/j"


@pytest.mark.parametrize(
    ("user", "topic", "access", "allowed"),
    [
        ("edge-0", f"{J}/status/edge-0", WRITE, True),
        ("edge-0", f"{J}/update/edge-0", WRITE, True),
        ("edge-0", f"{J}/update/edge-1", WRITE, False),  # another edge's update
        ("edge-0", f"{J}/status/edge-1", WRITE, False),
        ("edge-0", f"{J}/task", WRITE, False),
        ("edge-0", f"{J}/model/3", WRITE, False),
        ("edge-0", f"{J}/task", READ, True),
        ("edge-0", f"{J}/delta/0", READ, True),
        ("edge-0", f"{J}/update/edge-1", READ, False),
        ("edge-0", f"{J}/status/hq", READ, False),
        ("edge-0", "other/topic", WRITE, False),
        ("hq", f"{J}/task", WRITE, True),
        ("hq", f"{J}/model/12", WRITE, True),
        ("hq", f"{J}/control", WRITE, True),
        ("hq", f"{J}/status/hq", WRITE, True),
        ("hq", f"{J}/status/edge-0", WRITE, False),
        ("hq", f"{J}/update/edge-3", READ, True),
        ("hq", f"{J}/update/edge-3", WRITE, False),
        (None, f"{J}/task", READ, True),  # read patterns without %u apply to anonymous too
        (None, f"{J}/status/x", WRITE, False),
    ],
)
def test_fedmq_acl(user: str | None, topic: str, access: int, allowed: bool) -> None:
    assert ACL.allows(user, f"j-{user}", topic, access) is allowed


def test_subscriptions_must_lie_inside_a_read_rule() -> None:
    assert ACL.allows_subscribe("edge-0", "c", f"{J}/model/+")
    assert ACL.allows_subscribe("edge-0", "c", "fedmq/+/task")
    assert not ACL.allows_subscribe("edge-0", "c", f"{J}/update/+")
    assert not ACL.allows_subscribe("edge-0", "c", f"{J}/#")
    assert not ACL.allows_subscribe("edge-0", "c", "#")
    assert ACL.allows_subscribe("hq", "c", f"{J}/update/+")


def test_dangerous_names_get_no_pattern_rules_that_name_them() -> None:
    # A username `+` would turn `status/%u` into `status/+`: every edge's status.
    assert not ACL.allows("+", "c", f"{J}/status/+", WRITE)
    assert not ACL.allows("+", "c", f"{J}/status/edge-0", WRITE)
    assert ACL.allows("+", "c", f"{J}/task", READ)  # a pattern without %u still applies
    acl = parse_acl("pattern readwrite c/%c/#\npattern write u/%u\n", "t")
    assert not acl.allows("u", "a/b", "c/a/b/x", WRITE)
    # amqtt names a client that sends no id `amqtt/<random>`: only %c rules are off for it.
    assert acl.allows("u", "amqtt/xyz", "u/u", WRITE)


def test_deny_wins_and_anonymous_rules_come_first() -> None:
    acl = parse_acl("topic read public/#\nuser a\ntopic a/#\ntopic deny a/secret\n", "t")
    assert acl.allows(None, "c", "public/x", READ)
    assert not acl.allows("a", "c", "public/x", READ)
    assert acl.allows("a", "c", "a/x", WRITE) and acl.allows("a", "c", "a/x", READ)
    assert not acl.allows("a", "c", "a/secret", READ)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("topic read a/#/b", r"acl:1: 'a/#/b' is not a valid topic filter"),
        ("user\n", r"acl:1: `user` needs a username"),
        ("\n# c\nallow a/b", r"acl:3: unknown keyword 'allow'"),
        ("pattern write a+/b", r"acl:1: 'a\+/b' is not a valid"),
    ],
)
def test_a_bad_acl_line_is_named(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_acl(text, "acl")


def test_the_shipped_mosquitto_acl_is_fedmqs_acl() -> None:
    assert (CONFIGS / "fedmq.acl").read_text() == fedmq_acl("cloud")


LEVEL = st.sampled_from(["a", "b", "+", "#"])


@given(st.lists(LEVEL, min_size=1, max_size=4), st.lists(LEVEL, min_size=1, max_size=4),
       st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))  # fmt: skip
def test_a_covered_filter_matches_nothing_its_cover_does_not(
    outer: list[str], inner: list[str], topic: list[str]
) -> None:
    o, i, t = "/".join(outer), "/".join(inner), "/".join(topic)
    if filter_covers(o, i) and topic_matches(i, t):
        assert topic_matches(o, t)


def test_topic_matching() -> None:
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/c/d")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c")
    assert not topic_matches("#", "$SYS/x") and not topic_matches("+/x", "$SYS/x")


# --- certificates ---------------------------------------------------------------------------


def test_trial_pki_chains_to_its_ca_and_reuses_it(tmp_path: Path) -> None:
    pki = make_trial_pki(tmp_path, ["edge-0"])
    assert {p.name for p in pki.written} == {
        "ca.pem", "ca.key", "server.pem", "server.key", "edge-0.pem", "edge-0.key",
    }  # fmt: skip
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    # A second call adds a device signed by the same CA and keeps everything else.
    again = make_trial_pki(tmp_path, ["edge-0", "edge-1"])
    assert {p.name for p in again.written} == {"edge-1.pem", "edge-1.key"}
    device = x509.load_pem_x509_certificate(again.device("edge-1")[0].read_bytes())
    device.verify_directly_issued_by(ca)
    # Python's own TLS stack accepts the files as they are.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(*map(str, again.device("edge-1")))


# --- configuration errors -------------------------------------------------------------------


def test_tls_files_are_checked_when_a_session_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="use mqtts://"):
        Session(SessionConfig("mqtt://127.0.0.1:1883", "c", tls_ca="ca.pem"), lambda t, p: None)
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        Session(SessionConfig("mqtts://127.0.0.1", "c", tls_ca=missing), lambda t, p: None)
    with pytest.raises(ConfigError, match=r"client certificate .*nope\.pem"):
        Session(SessionConfig("mqtts://127.0.0.1", "c", tls_cert=missing), lambda t, p: None)


def test_broker_config_refuses_a_closed_broker_without_passwords() -> None:
    with pytest.raises(ConfigError, match="password file"):
        BrokerConfig(allow_anonymous=False)
    assert BrokerConfig().allow_anonymous  # the Python API stays open for in-process use


# --- CLI ------------------------------------------------------------------------------------


def test_cli_broker_refuses_to_start_open_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "--port", "0"]) == 2
    assert "--password-file" in capsys.readouterr().err


def test_cli_passwd_reads_stdin_and_stores_only_a_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["passwd", str(path), "edge-0", "--password-stdin", "--iterations", "50"]) == 0
    assert "added edge-0" in capsys.readouterr().out
    assert "correct horse" not in path.read_text()
    assert "$7$50$" in path.read_text()
    assert PasswordFile(path).verify("edge-0", "correct horse")
    assert main(["passwd", str(path), "edge-0", "--delete"]) == 0
    assert PasswordFile(path).users == []


def test_cli_acl_prints_the_acl_for_a_cloud_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "--cloud-user", "hq"]) == 0
    assert capsys.readouterr().out == fedmq_acl("hq")
