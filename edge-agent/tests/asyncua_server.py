"""An OPC-UA server built with asyncua, for edge-agent/tests/opcua_interop.rs.

asyncua is an implementation independent of the agent's client library, so the test checks
the agent's endpoint choice, security, login, subscriptions and value conversion against
someone else's server, not only against our own simulator.

Listens on 127.0.0.1 at a port the system picks, with security None and Basic256Sha256
(Sign and SignAndEncrypt) under a self-signed certificate made in the directory given as the
first argument; accepts anonymous logins and the user "operator" with the password
"interop-pass". Prints the port and the namespace index on one line once it listens, and
exits when its standard input closes (the test holds the pipe).

Variables, in namespace "urn:maintainpro:interop", all under Objects/Interop:
  Flag (Boolean true), Tiny (SByte -7), Octet (Byte 200), Small (Int16 -1234),
  Word (UInt16 65000), Medium (Int32 -70000), Big (UInt32 4000000000), Huge (Int64 -2**40),
  Vast (UInt64 2**50), Ratio (Float 1.5), Level (Double 3.25), State (String "RUNNING"),
  Counter (Double, +1 every 100 ms from 0), Broken (Double, status BadSensorFailure).

Run by scripts/test.sh through the virtual environment it creates (asyncua 2.1).
"""

import asyncio
import socket
from datetime import datetime, timezone
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

URI = "urn:maintainpro:interop"


class Users(UserManager):
    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return User(role=UserRole.User)
        if username == "operator" and password == "interop-pass":
            return User(role=UserRole.User, name=username)
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main():
    pki = Path(sys.argv[1])
    pki.mkdir(parents=True, exist_ok=True)
    cert, key = pki / "server-cert.der", pki / "server-key.pem"
    port = free_port()
    server = Server(user_manager=Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_server_name("MaintAInPro interop peer")
    await server.set_application_uri("urn:maintainpro:interop:server")
    await setup_self_signed_certificate(
        key,
        cert,
        "urn:maintainpro:interop:server",
        "127.0.0.1",
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        {"countryName": "NL", "organizationName": "MaintAInPro", "commonName": "interop"},
    )
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    server.set_security_policy(
        [
            ua.SecurityPolicyType.NoSecurity,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ],
        permission_ruleset=SimpleRoleRuleset(),
    )
    server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
    ns = await server.register_namespace(URI)
    folder = await server.nodes.objects.add_folder(ua.NodeId("Interop", ns), "Interop")

    async def var(name, value, variant):
        return await folder.add_variable(ua.NodeId(name, ns), name, ua.Variant(value, variant))

    await var("Flag", True, ua.VariantType.Boolean)
    await var("Tiny", -7, ua.VariantType.SByte)
    await var("Octet", 200, ua.VariantType.Byte)
    await var("Small", -1234, ua.VariantType.Int16)
    await var("Word", 65000, ua.VariantType.UInt16)
    await var("Medium", -70000, ua.VariantType.Int32)
    await var("Big", 4000000000, ua.VariantType.UInt32)
    await var("Huge", -(2**40), ua.VariantType.Int64)
    await var("Vast", 2**50, ua.VariantType.UInt64)
    await var("Ratio", 1.5, ua.VariantType.Float)
    await var("Level", 3.25, ua.VariantType.Double)
    await var("State", "RUNNING", ua.VariantType.String)
    counter = await var("Counter", 0.0, ua.VariantType.Double)
    broken = await var("Broken", 0.0, ua.VariantType.Double)
    await broken.write_value(
        ua.DataValue(
            ua.Variant(0.0, ua.VariantType.Double),
            StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
        )
    )

    async with server:
        print(f"{port} {ns}", flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        n = 0.0
        while not stdin_closed.done():
            await asyncio.sleep(0.1)
            n += 1.0
            await counter.write_value(
                ua.DataValue(
                    ua.Variant(n, ua.VariantType.Double),
                    SourceTimestamp=datetime.now(timezone.utc),
                )
            )


if __name__ == "__main__":
    asyncio.run(main())
