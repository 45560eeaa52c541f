#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ (real protocol messages and configurations).

Run from anywhere: python3 fuzz/make_seeds.py. Deterministic, so re-running changes nothing.
The SCRAM seeds are computed for the keys and server nonce fixed in
fuzz_targets/scram_server.rs, so they replay to a valid proof.
"""
import base64
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def msg(tag, body=b""):
    return tag.encode() + struct.pack(">i", len(body) + 4) + body


def startup(params, version=196608):
    body = struct.pack(">i", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">i", len(body) + 4) + body


SSL_REQUEST = struct.pack(">ii", 8, 80877103)
GSSENC_REQUEST = struct.pack(">ii", 8, 80877104)


def cancel(pid, secret):
    return struct.pack(">iiii", 16, 80877102, pid, secret)


# --- client and server message sequences --------------------------------------------------

def parse(name, sql, types=()):
    return msg("P", cstr(name) + cstr(sql) + struct.pack(">h", len(types))
               + b"".join(struct.pack(">i", t) for t in types))


def bind(portal, stmt, params, formats=(), result_formats=()):
    b = cstr(portal) + cstr(stmt) + struct.pack(">h", len(formats))
    b += b"".join(struct.pack(">h", f) for f in formats)
    b += struct.pack(">h", len(params))
    for p in params:
        b += struct.pack(">i", -1) if p is None else struct.pack(">i", len(p)) + p
    b += struct.pack(">h", len(result_formats)) + b"".join(struct.pack(">h", f) for f in result_formats)
    return msg("B", b)


def describe(kind, name):
    return msg("D", kind.encode() + cstr(name))


def execute(portal, rows=0):
    return msg("E", cstr(portal) + struct.pack(">i", rows))


SYNC = msg("S")
TERMINATE = msg("X")


def query(sql):
    return msg("Q", cstr(sql))


EXTENDED = (
    parse("s1", "select $1::int + 1", [23])
    + bind("", "s1", [b"41"], [0], [0])
    + describe("P", "")
    + execute("")
    + SYNC
    + bind("p", "s1", [None], [1], [1])
    + execute("p", 10)
    + msg("C", b"P" + cstr("p"))
    + SYNC
)


def row_description(cols):
    b = struct.pack(">h", len(cols))
    for name, oid in cols:
        b += cstr(name) + struct.pack(">ihihih", 0, 0, oid, 4, -1, 0)
    return msg("T", b)


def data_row(vals):
    b = struct.pack(">h", len(vals))
    for v in vals:
        b += struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v
    return msg("D", b)


def error(tag, severity, code, message):
    return msg(tag, b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code)
               + b"M" + cstr(message) + b"\0")


SERVER = (
    msg("R", struct.pack(">i", 0))
    + msg("S", cstr("server_version") + cstr("16.2"))
    + msg("S", cstr("client_encoding") + cstr("UTF8"))
    + msg("K", struct.pack(">ii", 4194305, 123456789))
    + msg("Z", b"I")
    + msg("1") + msg("2")
    + row_description([("?column?", 23), ("name", 25)])
    + data_row([b"42", None])
    + data_row([b"1", b"x"])
    + msg("C", cstr("SELECT 2"))
    + error("N", "NOTICE", "00000", "hello")
    + error("E", "ERROR", "42P01", 'relation "t" does not exist')
    + msg("Z", b"E")
)


def frame_seed(max_, chunking, flags, stream):
    return struct.pack(">HBB", max_, chunking, flags) + stream


APP = [("user", "app"), ("database", "app"), ("application_name", "psql"),
       ("options", "-c search_path=a,b -cstatement_timeout=5s --lock-timeout=1s"),
       ("client_encoding", "UTF8")]

write("frame_codec", "extended_query", frame_seed(0xFFFF, 0, 0, EXTENDED))
write("frame_codec", "extended_query_chunked_peek", frame_seed(8192, 3, 2, EXTENDED))
write("frame_codec", "simple_query_random_chunks_take",
      frame_seed(1024, 200, 4 | 8, query("select 1") + query("begin; select now(); commit") + TERMINATE))
write("frame_codec", "startup_then_queries", frame_seed(
    0xFFFF, 7, 1 | 16, startup(APP) + query("select 1") + EXTENDED + TERMINATE))
write("frame_codec", "server_responses", frame_seed(0xFFFF, 0, 4, SERVER))
write("frame_codec", "server_responses_chunked", frame_seed(512, 130, 8, SERVER))
write("frame_codec", "bad_length", frame_seed(0xFFFF, 0, 0, query("x") + b"Q\0\0\0\3"))
write("frame_codec", "too_large", frame_seed(64, 0, 0, query("select " + "x" * 100)))

write("startup_packet", "ssl_then_startup", SSL_REQUEST + startup(APP))
write("startup_packet", "gssenc_then_startup",
      GSSENC_REQUEST + startup([("user", "postgres"), ("replication", "false")]))
write("startup_packet", "cancel", cancel(0x00C0_0001, 0x1234_5678))
write("startup_packet", "protocol_3_2", startup(
    [("user", "u"), ("_pq_.command_trigger", "on"), ("options", "-c a=b -c c=d")], 196610))
write("startup_packet", "no_user", startup([("database", "db")]))
write("startup_packet", "replication", startup([("user", "u"), ("replication", "database")]))
write("startup_packet", "protocol_2", startup([("user", "u")], 131072))

# --- TLS negotiation (fuzz_targets/tls_negotiation.rs: flags byte, then the client's bytes) ---

# A ClientHello as Python's ssl module (OpenSSL) sends it for localhost with ALPN postgresql,
# captured once (its random and key share are fixed here, so the seeds stay deterministic).
CLIENT_HELLO = bytes.fromhex(
    "1603010200010001fc0303c4b2f4e23076bb83e9678808d0ddef2eb8bbd4b0c91306e52d581fea86b4e82f20"
    "6fc2749a89e3e2bffb3da6f28524e8ef1321cb522eab9a0e2478d87ddf629f1b0024130213031301c02cc030"
    "c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff0100018f0000000e000c0000096c6f63616c"
    "686f7374000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000010"
    "000d000b0a706f737467726573716c0016000000170000000d002a0028040305030603080708080809080a08"
    "0b080408050806040105010601030303010302040205020602002b00050403040303002d0002010100330026"
    "0024001d0020681b177536d8129cca7061027e9f21cf5e3bc591e8481f9b9d3f50fbee3c0b26001500d3"
    + "00" * 211)


def tls_flags(read_size, mtls=False, tls13=False):
    return bytes([((read_size - 1) << 2) | (1 if mtls else 0) | (2 if tls13 else 0)])


# Reads of 8 bytes: the SSLRequest's read holds nothing else, then the ClientHello in pieces.
write("tls_negotiation", "ssl_request_client_hello", tls_flags(8) + SSL_REQUEST + CLIENT_HELLO)
write("tls_negotiation", "ssl_request_client_hello_mtls",
      tls_flags(8, mtls=True) + SSL_REQUEST + CLIENT_HELLO)
write("tls_negotiation", "ssl_request_client_hello_tls13_bytewise",
      tls_flags(1, tls13=True) + SSL_REQUEST + CLIENT_HELLO)
write("tls_negotiation", "direct_client_hello", tls_flags(64) + CLIENT_HELLO)
write("tls_negotiation", "ssl_request_then_plaintext", tls_flags(64) + SSL_REQUEST + startup(APP))
write("tls_negotiation", "ssl_request_then_garbage",
      tls_flags(8) + SSL_REQUEST + b"\x16\x03\x01\xff\xff" + b"garbage" * 20)
write("tls_negotiation", "gssenc_then_ssl_request",
      tls_flags(8) + GSSENC_REQUEST + SSL_REQUEST + CLIENT_HELLO)

# --- SCRAM (fuzz_targets/scram_server.rs: PASSWORD, SALT, SERVER_NONCE, 4096 rounds) ---------

PASSWORD = b"pencil"
SALT = b"helios-fuzz-salt"
SERVER_NONCE = b"helios-fuzz-nonce!"
ITER = 4096


def scram(user, client_nonce, gs2=b"n,,", password=PASSWORD):
    salted = hashlib.pbkdf2_hmac("sha256", password, SALT, ITER)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    bare = b"n=" + user + b",r=" + client_nonce
    nonce = client_nonce + base64.b64encode(SERVER_NONCE)
    server_first = (b"r=" + nonce + b",s=" + base64.b64encode(SALT) + b",i=" + str(ITER).encode())
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + nonce
    auth = bare + b"," + server_first + b"," + without_proof
    sig = hmac.new(stored_key, auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    return gs2 + bare, without_proof + b",p=" + base64.b64encode(proof)


first, final = scram(b"", b"rOprNGfwEbeRWgbNEkqO")  # libpq sends an empty user name
write("scram_server", "libpq_exchange", b"\0" + first + b"\0" + final)
write("scram_server", "verifier_exchange", b"\1" + first + b"\0" + final)
first, final = scram(b"user", b"fyko+d2lbbFgONRv9qkxdawL", gs2=b"y,,")
write("scram_server", "named_user_y_flag", b"\0" + first + b"\0" + final)
first, final = scram(b"user", b"abc", password=b"wrong")
write("scram_server", "wrong_password", b"\0" + first + b"\0" + final)
write("scram_server", "client_first_only", b"\0n,,n=user,r=nonce")
write("scram_server", "channel_binding_plus", b"\0p=tls-server-end-point,,n=,r=abc")

# --- configurations ---------------------------------------------------------------------

with open(os.path.join(ROOT, "config", "proxy.toml"), "rb") as f:
    write("config_parser", "proxy.toml", f.read())
write("config_parser", "minimal.toml", """[auth]
method = "trust"

[[nodes]]
name = "pg"
host = "127.0.0.1"

[databases.app]
user = "app"
password = "${PGPASSWORD}"
""")
write("config_parser", "two_nodes.toml", """[server]
listen = ["0.0.0.0:6432", "[::1]:6433"]
cores = 2
sched_slice_us = 0

[limits]
max_message_size_bytes = 1024

[auth]
method = "md5"
userlist = "userlist.txt"
admin_users = ["admin"]

[admin]
listen = "0.0.0.0:9090"
token = "${HELIOS_ADMIN_TOKEN:-}"

[[nodes]]
name = "a"
host = "db-a"
port = 5433

[[nodes]]
name = "b"
host = "db-b"

[databases.app]
node = "b"
pool_mode = "session"
pool_size = 4
min_idle = 2

[databases.other]
dbname = "${NOPE:-postgres}"
""")
write("config_parser", "userlist.txt", (
    '; comment\n'
    '"alice" "plain ""pw"""\n'
    '"bob" "md5a3556571e93b0d20722ba62be61e8c2d"\n'
    '"carol" "SCRAM-SHA-256$4096:c2FsdA==$dHJhbnNwb3J0dHJhbnNwb3J0dHJhbnNwb3J0dHJhbnM='
    ':c2VydmVyc2VydmVyc2VydmVyc2VydmVyc2VydmVyc2U="\n'
))
