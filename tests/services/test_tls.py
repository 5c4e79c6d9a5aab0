"""Mutual TLS between the gRPC services and their clients: a real executor server on port 0.

The certificates are made here with `cryptography` (a CA, a server certificate for
127.0.0.1, a client certificate, and a client certificate of another CA); the server
requires a client certificate of its CA, so only the first client gets through.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import grpc
import pytest

from rstar_executor import SandboxExecutor, SandboxSettings
from rstar_executor.service import ExecutorService
from rstar_rpc import ClientSettings, GrpcExecutorClient, ServerSettings, create_server
from rstar_rpc.healthcheck import check
from rstar_rpc.settings import TlsSettings

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pair(directory: Path, stem: str, key, cert) -> tuple[str, str]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _ca(common_name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca, common_name: str, usage, sans=()):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, TlsSettings]:
    """TLS settings by role: server, client, no_cert (CA only), stranger (another CA)."""
    directory = tmp_path_factory.mktemp("certs")
    ca, other_ca = _ca("rstar test CA"), _ca("another CA")
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    server = _leaf(ca, "rstar services", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = _leaf(ca, "rstar worker", [ExtendedKeyUsageOID.CLIENT_AUTH])
    stranger = _leaf(other_ca, "rstar worker", [ExtendedKeyUsageOID.CLIENT_AUTH])
    settings = {"no_cert": TlsSettings(ca=str(ca_path))}
    for role, (key, cert) in (("server", server), ("client", client), ("stranger", stranger)):
        cert_path, key_path = _write_pair(directory, role, key, cert)
        settings[role] = TlsSettings(cert=cert_path, key=key_path, ca=str(ca_path))
    return settings


@pytest.fixture(scope="module")
def address(loop, certs):
    """127.0.0.1:port of an executor server that requires mutual TLS."""
    sandbox = SandboxExecutor(SandboxSettings(pool_size=1, preload_modules=("math",)))
    service = ExecutorService()

    async def start():
        server, port = await create_server(service, ServerSettings(
            service="executor", host="127.0.0.1", port=0, tls=certs["server"]))
        await server.start()
        await service.start(sandbox)
        return server, port

    server, port = loop.run_until_complete(start())
    yield f"127.0.0.1:{port}"
    loop.run_until_complete(server.stop(None))
    loop.run_until_complete(sandbox.close())


def _run(loop, address: str, tls: TlsSettings | None):
    settings = ClientSettings(target=address, deadline_s=2.0,
                              **({"tls": tls} if tls is not None else {}))

    async def go():
        async with GrpcExecutorClient(settings) as client:
            return await client.run("print(6 * 7)")

    return loop.run_until_complete(go())


def test_client_with_a_certificate_of_the_ca_is_served(loop, address, certs):
    result = _run(loop, address, certs["client"])
    assert result.ok and result.stdout == "42\n", result


@pytest.mark.parametrize("role", ["no_cert", "stranger", "plaintext"])
def test_client_without_a_certificate_of_the_ca_is_refused(loop, address, certs, role):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _run(loop, address, None if role == "plaintext" else certs[role])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_healthcheck_speaks_tls_with_the_servers_own_certificate(loop, address, certs):
    def blocking_check(**kwargs):
        # `check` blocks; in a thread, so that the loop can serve meanwhile.
        return loop.run_until_complete(loop.run_in_executor(None, lambda: check(address, **kwargs)))

    # Inside a server's container, the healthcheck has the server's RSTAR_TLS_* variables.
    assert blocking_check(tls=certs["server"]) == "SERVING"
    with pytest.raises(grpc.RpcError) as refused:
        blocking_check()  # plaintext
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_from_env_and_their_errors(tmp_path, certs):
    env = {"RSTAR_TLS_CERT": certs["client"].cert, "RSTAR_TLS_KEY": certs["client"].key,
           "RSTAR_TLS_CA": certs["client"].ca, "RSTAR_TLS_SERVER_NAME": "executor"}
    assert ClientSettings.from_env("executor", env).tls == TlsSettings(
        certs["client"].cert, certs["client"].key, certs["client"].ca, "executor")
    assert ServerSettings.from_env("executor", env).tls.enabled
    assert not ServerSettings.from_env("executor", {}).tls.enabled  # off unless set
    with pytest.raises(ValueError, match="RSTAR_TLS_CERT and RSTAR_TLS_KEY must be set together"):
        TlsSettings.from_env({"RSTAR_TLS_KEY": certs["client"].key})
    with pytest.raises(ValueError, match="a TLS server needs RSTAR_TLS_CERT"):
        ServerSettings.from_env("executor", {"RSTAR_TLS_CA": certs["client"].ca})
    missing = TlsSettings(ca=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match=r"RSTAR_TLS_CA=.*nope.pem: cannot read"):
        GrpcExecutorClient(ClientSettings(target="127.0.0.1:1", tls=missing))


def test_make_test_ca_script_issues_verifiable_certificates(tmp_path):
    subprocess.run(["bash", str(REPO / "deploy" / "tls" / "make-test-ca.sh"), str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    for name in ("server", "client"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "policy", "reward", "executor"} <= set(names.get_values_for_type(x509.DNSName))
    subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"),
                    str(tmp_path / "server.pem"), str(tmp_path / "client.pem")],
                   check=True, capture_output=True, timeout=30)
