"""AUTH, users and roles on the client port (kvd.resp.auth, kvd.resp.connection), and the client's credentials."""

import hashlib
import timeit

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.kv.results import OK
from kvd.resp import client as resp_client
from kvd.resp.auth import ADMIN, READONLY, READWRITE, User, Users, UsersError, digest, hash_password, parse_users
from kvd.resp.commands import parse_request
from kvd.resp.connection import Connection, required_role
from kvd.resp.protocol import RespFactory

NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"

USERS_FILE = """\
# name role password
reader readonly %s
writer readwrite >w-secret

boss admin >b-secret
""" % hash_password("r-secret")


class Echo:
    """An executor that answers every request with OK and records it."""

    def __init__(self):
        self.calls = []

    def execute(self, request, connection):
        self.calls.append(request)
        return OK


def users(requirepass="sesame", text=USERS_FILE):
    found = parse_users(text)
    if requirepass:
        found["default"] = User("default", ADMIN, digest(requirepass.encode()))
    return Users(found)


def connect(users_=None):
    executor = Echo()
    factory = RespFactory(executor, users=users_ if users_ is not None else users())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, executor


def say(proto, transport, line: bytes) -> bytes:
    transport.clear()
    proto.dataReceived(line + b"\r\n")
    return transport.value()


# ------------------------------------------------------------- without AUTH


@pytest.mark.parametrize("line", [b"GET k", b"SET k v", b"PING", b"INFO", b"KVD.MEMBERS", b"KVD.REMOVE n1",
                                  b"CLIENT ID", b"COMMAND", b"ECHO x", b"KEYS *", b"MULTI", b"SELECT 0"])
def test_without_auth_every_command_but_auth_hello_quit_is_noauth(line):
    proto, transport, executor = connect()
    assert say(proto, transport, line) == NOAUTH
    assert executor.calls == [] and not transport.disconnecting


def test_hello_without_auth_is_noauth_but_quit_works():
    proto, transport, _ = connect()
    assert say(proto, transport, b"HELLO 3").startswith(b"-NOAUTH HELLO must be called with the client already authenticated")
    assert say(proto, transport, b"HELLO").startswith(b"-NOAUTH")
    assert proto.connection.protocol == 2
    assert say(proto, transport, b"QUIT") == b"+OK\r\n" and transport.disconnecting


# ------------------------------------------------------------------- AUTH


def test_auth_with_the_requirepass_password():
    proto, transport, executor = connect()
    assert say(proto, transport, b"AUTH nope") == WRONGPASS
    assert say(proto, transport, b"GET k") == NOAUTH
    assert say(proto, transport, b"AUTH sesame") == b"+OK\r\n"
    assert say(proto, transport, b"SET k v") == b"+OK\r\n"
    assert say(proto, transport, b"KVD.REMOVE n1") == b"+OK\r\n"  # the default user is an admin
    assert len(executor.calls) == 2


def test_auth_user_pass_and_hello_auth():
    proto, transport, _ = connect()
    assert say(proto, transport, b"AUTH writer nope") == WRONGPASS
    assert say(proto, transport, b"AUTH nobody w-secret") == WRONGPASS
    assert say(proto, transport, b"AUTH writer w-secret") == b"+OK\r\n"
    assert b"user=writer" in say(proto, transport, b"CLIENT INFO")

    proto, transport, _ = connect()
    assert say(proto, transport, b"HELLO 3 AUTH reader wrong") == WRONGPASS
    assert proto.connection.protocol == 2
    reply = say(proto, transport, b"HELLO 3 AUTH reader r-secret SETNAME app")
    assert reply.startswith(b"%7\r\n") and proto.connection.protocol == 3 and proto.connection.name == b"app"
    assert say(proto, transport, b"GET k") == b"+OK\r\n"


def test_a_failed_auth_keeps_the_earlier_login():
    proto, transport, _ = connect()
    say(proto, transport, b"AUTH writer w-secret")
    assert say(proto, transport, b"AUTH writer nope") == WRONGPASS
    assert say(proto, transport, b"SET k v") == b"+OK\r\n"


def test_auth_syntax():
    proto, transport, _ = connect()
    assert say(proto, transport, b"AUTH") == b"-ERR wrong number of arguments for 'auth' command\r\n"
    assert say(proto, transport, b"AUTH a b c") == b"-ERR syntax error\r\n"


def test_without_users_the_port_is_open_and_auth_says_so():
    proto, transport, executor = connect(Users())
    assert say(proto, transport, b"SET k v") == b"+OK\r\n"
    assert say(proto, transport, b"AUTH pw").startswith(b"-ERR AUTH <password> called without any password configured")
    assert say(proto, transport, b"AUTH default anything") == b"+OK\r\n"
    assert say(proto, transport, b"AUTH alice pw") == WRONGPASS
    assert say(proto, transport, b"HELLO 3 AUTH default x").startswith(b"%7")


# ------------------------------------------------------------------- roles


@pytest.mark.parametrize("line,name", [(b"SET k v", "set"), (b"DEL k", "del"), (b"MSET a 1 b 2", "mset"),
                                       (b"INCR n", "incrby"), (b"KVD.MEMBERS", "kvd.members"),
                                       (b"KVD.CLUSTER", "kvd.cluster"), (b"KVD.JOIN n 1.2.3.4:1", "kvd.join"),
                                       (b"KVD.REMOVE n", "kvd.remove"), (b"CONFIG GET *", "config|get")])
def test_a_readonly_user_gets_noperm_on_writes_and_kvd(line, name):
    proto, transport, executor = connect()
    say(proto, transport, b"AUTH reader r-secret")
    assert say(proto, transport, line) == b"-NOPERM User reader has no permissions to run the '%s' command\r\n" % name.encode()
    assert executor.calls == []


@pytest.mark.parametrize("line", [b"GET k", b"MGET a b", b"EXISTS k", b"KEYS *", b"SCAN 0", b"DBSIZE", b"INFO", b"ROLE"])
def test_a_readonly_user_may_read(line):
    proto, transport, executor = connect()
    say(proto, transport, b"AUTH reader r-secret")
    assert say(proto, transport, line) == b"+OK\r\n"


def test_a_readwrite_user_may_write_but_not_run_kvd_commands():
    proto, transport, executor = connect()
    say(proto, transport, b"AUTH writer w-secret")
    assert say(proto, transport, b"SET k v") == b"+OK\r\n"
    assert say(proto, transport, b"KVD.JOIN n 1.2.3.4:1").startswith(b"-NOPERM")
    assert say(proto, transport, b"KVD.MEMBERS").startswith(b"-NOPERM")


def test_an_admin_may_run_everything():
    proto, transport, executor = connect()
    say(proto, transport, b"AUTH boss b-secret")
    for line in (b"SET k v", b"KVD.JOIN n 1.2.3.4:1", b"KVD.REMOVE n", b"CONFIG GET *", b"GET k"):
        assert say(proto, transport, line) == b"+OK\r\n"


def test_required_roles():
    assert required_role(parse_request([b"GET", b"k"])) == READONLY
    assert required_role(parse_request([b"SET", b"k", b"v"])) == READWRITE
    assert required_role(parse_request([b"KVD.MEMBERS"])) == ADMIN
    assert required_role(parse_request([b"CONFIG", b"GET", b"x"])) == ADMIN
    assert required_role(parse_request([b"INFO"])) == READONLY


def test_passwords_never_show_in_a_request_repr():
    assert "sesame" not in repr(parse_request([b"AUTH", b"sesame"]))
    assert "sesame" not in repr(parse_request([b"HELLO", b"3", b"AUTH", b"u", b"sesame"]))
    assert "sesame" not in repr(users().authenticate(None, b"sesame"))


# ------------------------------------------------------------- users files


def test_users_file_parsing():
    found = parse_users(USERS_FILE)
    assert sorted(found) == ["boss", "reader", "writer"]
    assert found["reader"].role == READONLY
    assert found["reader"].password_digest == hashlib.sha256(b"r-secret").digest()
    assert found["boss"].may(READWRITE) and not found["reader"].may(READWRITE)


@pytest.mark.parametrize("text,words", [
    ("a admin", "expected 'name role password'"),
    ("a root >x", "unknown role"),
    ("a admin plain", "must be '#<sha256 hex>' or '>password'"),
    ("a admin #abc", "64 hex digits"),
    ("a admin >x\na readonly >y", "listed twice"),
])
def test_bad_users_files_say_why(text, words):
    with pytest.raises(UsersError, match=words):
        parse_users(text)


def test_load_from_a_password_file_the_environment_and_a_users_file(tmp_path):
    secret = tmp_path / "pass"
    secret.write_text("from-file\n")
    table = tmp_path / "users"
    table.write_text(USERS_FILE)
    loaded = Users.load(str(secret), str(table), environ={})
    assert loaded.authenticate(None, b"from-file").role == ADMIN
    assert loaded.authenticate(b"writer", b"w-secret").role == READWRITE
    assert Users.load(None, None, environ={"KVD_REQUIREPASS": "env-pw"}).authenticate(b"default", b"env-pw")
    assert not Users.load(None, None, environ={}).required
    with pytest.raises(UsersError, match="cannot read"):
        Users.load(str(tmp_path / "missing"), None, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsersError, match="empty"):
        Users.load(str(tmp_path / "empty"), None, environ={})


def test_password_checks_take_the_same_time_right_or_wrong():
    """hmac.compare_digest on SHA-256 digests: no early exit on the first wrong byte, nor for unknown users."""
    table = users()
    right = min(timeit.repeat(lambda: table.authenticate(None, b"sesame"), number=2000, repeat=5))
    wrong = min(timeit.repeat(lambda: table.authenticate(None, b"xesame"), number=2000, repeat=5))
    unknown = min(timeit.repeat(lambda: table.authenticate(b"ghost", b"sesame"), number=2000, repeat=5))
    assert max(right, wrong, unknown) < 3 * min(right, wrong, unknown)


# ------------------------------------------------------ the client's credentials


def test_client_credentials_from_the_environment(tmp_path):
    env = resp_client.credentials_from_env
    assert env({}) is None
    assert env({"KVD_PASSWORD": "pw"}) == (None, "pw")
    assert env({"KVD_PASSWORD": "pw", "KVD_USER": "boss"}) == ("boss", "pw")
    path = tmp_path / "pw"
    path.write_text("in-file\nignored\n")
    assert env({"KVD_PASSWORD_FILE": str(path)}) == (None, "in-file")
    with pytest.raises(resp_client.NotSent, match="cannot read the password file"):
        env({"KVD_PASSWORD_FILE": str(tmp_path / "missing")})


def test_the_client_authenticates_first_when_it_has_credentials(monkeypatch):
    monkeypatch.setenv("KVD_PASSWORD", "sesame")
    monkeypatch.delenv("KVD_USER", raising=False)
    conn = resp_client.Connection("127.0.0.1", 1, timeout=1)
    assert conn.auth == (None, "sesame")
    assert resp_client.Connection("127.0.0.1", 1, timeout=1, auth=None).auth is None


# ------------------------------------------------------------- twistd options


def test_twistd_options_for_passwords_users_and_tls(tmp_path, monkeypatch):
    from twisted.python import usage

    from kvd.tap import Options

    monkeypatch.delenv("KVD_REQUIREPASS", raising=False)
    base = ["--listen", "127.0.0.1:7001", "--initial-cluster", "127.0.0.1:7001", "--insecure-peers"]
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    options = Options()
    options.parseOptions(base + ["--requirepass-file", str(secret), "--maxclients", "5"])
    assert options["client-users"].authenticate(None, b"pw").role == ADMIN and options["maxclients"] == 5
    options = Options()
    options.parseOptions(base)
    assert not options["client-users"].required
    for bad, words in ((["--requirepass-file", str(tmp_path / "missing")], "cannot read the password file"),
                       (["--users", str(tmp_path / "missing")], "cannot read the users file"),
                       (["--tls-cert", str(secret)], "needs both --tls-cert and --tls-key"),
                       (["--maxclients", "many"], "whole number"), (["--maxmemory-clients", "1G"], "whole number"),
                       (["--tls-ca", str(secret)], "cannot use --tls-ca")):
        with pytest.raises(usage.UsageError, match=words):
            Options().parseOptions(base + bad)


def test_wrong_passwords_are_logged_and_guessing_closes_the_connection():
    from twisted.logger import globalLogPublisher

    from kvd.resp.protocol import MAX_AUTH_FAILURES

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto, transport, _ = connect()
        for attempt in range(1, MAX_AUTH_FAILURES):
            assert say(proto, transport, b"AUTH guess%d" % attempt) == WRONGPASS
        assert not transport.disconnecting
        transport.clear()
        proto.dataReceived(b"AUTH last-guess\r\nAUTH sesame\r\n")
        assert transport.value() == WRONGPASS and transport.disconnecting  # the right one comes too late
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "Wrong password" in (e.get("log_format") or "")]
    assert len(warnings) == 2  # the first, and the one that closes
    assert all("guess" not in repr(e) and "sesame" not in repr(e) for e in events)


def test_requirepass_only_from_the_config_file(tmp_path, monkeypatch):
    from twisted.python import usage

    from kvd.tap import Options

    monkeypatch.delenv("KVD_REQUIREPASS", raising=False)
    base = ["--listen", "127.0.0.1:7001", "--initial-cluster", "127.0.0.1:7001", "--insecure-peers"]
    with pytest.raises(usage.UsageError, match="visible to every user"):
        Options().parseOptions(base + ["--requirepass", "pw"])
    with pytest.raises(usage.UsageError, match="visible to every user"):
        Options().parseOptions(base + ["--requirepass=pw"])
    conf = tmp_path / "kvd.conf"
    conf.write_text("[kvd]\nrequirepass = from-conf\n")
    options = Options()
    options.parseOptions(base + ["--config", str(conf)])
    assert options["client-users"].authenticate(None, b"from-conf").role == ADMIN


def test_mgmt_says_where_the_password_goes():
    from kvd.cli.client import node_error

    error = node_error("127.0.0.1:7001", "NOAUTH Authentication required.")
    assert "NOAUTH Authentication required." in str(error) and "KVD_PASSWORD" in str(error)
