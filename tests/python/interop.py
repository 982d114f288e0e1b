#!/usr/bin/env python3
"""Python interop client for consenter-host.

This is a second, independent client of the `orderer.AtomicBroadcast` gRPC service.
It is built at run time from Hyperledger Fabric's own .proto files (the copies
shipped in the npm package `fabric-protos`) with grpcio-tools, so it shares no
generated code with the Rust node.

It signs N MESSAGE envelopes with an MSP identity and broadcasts them on one
stream. Then it opens a Deliver stream from block 0 and reads until every
tx id has been seen. Finally it checks the block hash chain (previous_hash is
the SHA-256 of the previous header's ASN.1 DER encoding, and data_hash is the
SHA-256 of the concatenated data entries).

On success it prints one JSON line on stdout and exits 0:
    {"broadcast_ok": N, "blocks": B, "found": N, "chain_ok": true}
On failure it prints the reason on stderr and exits 1.
"""

import argparse
import glob
import hashlib
import importlib
import json
import os
import queue
import sys
import tempfile
import threading
import time

# Fabric's solo/etcdraft orderers accept messages up to 100 MiB by default.
MAX_MSG = 100 * 1024 * 1024

# Order of the NIST P-256 group (for low-S normalisation).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

HEADER_TYPE_MESSAGE = 0
HEADER_TYPE_DELIVER_SEEK_INFO = 5
STATUS_SUCCESS = 200
U64_MAX = 2**64 - 1


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------
# Code generation from Fabric's .proto files
# ---------------------------------------------------------------------------

PROTO_FILES = ["common/common.proto", "msp/identities.proto", "orderer/ab.proto"]


def resolve_protos_root(path):
    """Accept the proto root itself (.../fabric-protos/protos) or the package dir."""
    for cand in (path, os.path.join(path, "protos")):
        if os.path.isfile(os.path.join(cand, "common", "common.proto")):
            return os.path.abspath(cand)
    raise Failure(f"no common/common.proto under {path!r} (expected the protos/ folder of the npm package fabric-protos)")


def well_known_types_dir():
    """Directory of the google/protobuf/*.proto files bundled with grpc_tools."""
    try:
        from importlib.resources import files

        d = str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - very old Pythons
        import pkg_resources

        d = pkg_resources.resource_filename("grpc_tools", "_proto")
    if not os.path.isfile(os.path.join(d, "google", "protobuf", "timestamp.proto")):
        raise Failure(f"grpc_tools has no bundled google/protobuf/timestamp.proto (looked in {d})")
    return d


def compile_protos(protos_root, out_dir):
    from grpc_tools import protoc

    argv = [
        "grpc_tools.protoc",
        f"-I{protos_root}",
        f"-I{well_known_types_dir()}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    rc = protoc.main(argv)
    if rc != 0:
        raise Failure(f"protoc failed with status {rc}: {' '.join(argv)}")
    # The generated modules import each other as `common.common_pb2` etc.; make sure
    # these resolve to the generated packages and not to anything else on sys.path.
    for pkg in ("common", "msp", "orderer"):
        open(os.path.join(out_dir, pkg, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)
    mods = {
        "common": importlib.import_module("common.common_pb2"),
        "msp": importlib.import_module("msp.identities_pb2"),
        "ab": importlib.import_module("orderer.ab_pb2"),
        "ab_grpc": importlib.import_module("orderer.ab_pb2_grpc"),
    }
    for name, mod in mods.items():
        if not os.path.abspath(mod.__file__).startswith(os.path.abspath(out_dir)):
            raise Failure(f"module {name} was imported from {mod.__file__}, not from the generated code")
    return mods


# ---------------------------------------------------------------------------
# Signing identity
# ---------------------------------------------------------------------------


class Signer:
    def __init__(self, msp_dir, mspid, pb):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from cryptography.hazmat.primitives.asymmetric import ec

        certs = sorted(glob.glob(os.path.join(msp_dir, "signcerts", "*.pem")))
        if not certs:
            raise Failure(f"no certificate in {os.path.join(msp_dir, 'signcerts')}/*.pem")
        with open(certs[0], "rb") as f:
            self.cert_pem = f.read()

        key_path = os.path.join(msp_dir, "keystore", "priv_sk")
        if not os.path.isfile(key_path):
            keys = sorted(glob.glob(os.path.join(msp_dir, "keystore", "*_sk")))
            if len(keys) != 1:
                raise Failure(f"no keystore/priv_sk (or single *_sk) in {msp_dir}")
            key_path = keys[0]
        with open(key_path, "rb") as f:
            self.key = load_pem_private_key(f.read(), password=None)
        if not isinstance(self.key, ec.EllipticCurvePrivateKey) or self.key.curve.name != "secp256r1":
            raise Failure(f"{key_path} is not an ECDSA P-256 private key")

        ident = pb["msp"].SerializedIdentity(mspid=mspid, id_bytes=self.cert_pem)
        self.creator = ident.SerializeToString()
        self._check_key_matches_cert(certs[0], key_path)

    def _check_key_matches_cert(self, cert_path, key_path):
        # A node need not check client signatures (consenter-host's dev channel has
        # no policies), so make sure here that what we sign verifies under the cert.
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        cert = x509.load_pem_x509_certificate(self.cert_pem)
        probe = b"consenter-host python interop key check"
        try:
            cert.public_key().verify(self.sign(probe), probe, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Failure(f"the key {key_path} does not match the certificate {cert_path}")

    def sign(self, data):
        """ECDSA P-256 / SHA-256, DER encoded, with S normalised to the lower half."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import (
            decode_dss_signature,
            encode_dss_signature,
        )

        der = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        if s > P256_N // 2:
            s = P256_N - s
            der = encode_dss_signature(r, s)
        return der


# ---------------------------------------------------------------------------
# Envelopes
# ---------------------------------------------------------------------------


def make_envelope(pb, signer, channel, header_type, data):
    common = pb["common"]
    nonce = os.urandom(24)
    # Fabric's tx id: hex(SHA-256(nonce || creator)) — unique because of the nonce.
    tx_id = hashlib.sha256(nonce + signer.creator).hexdigest()
    ch = common.ChannelHeader(type=header_type, version=0, channel_id=channel, tx_id=tx_id, epoch=0)
    ch.timestamp.GetCurrentTime()
    sh = common.SignatureHeader(creator=signer.creator, nonce=nonce)
    payload = common.Payload(
        header=common.Header(
            channel_header=ch.SerializeToString(),
            signature_header=sh.SerializeToString(),
        ),
        data=data,
    )
    payload_bytes = payload.SerializeToString()
    env = common.Envelope(payload=payload_bytes, signature=signer.sign(payload_bytes))
    return tx_id, env


def envelope_tx_id(pb, env_bytes):
    common = pb["common"]
    env = common.Envelope.FromString(env_bytes)
    payload = common.Payload.FromString(env.payload)
    ch = common.ChannelHeader.FromString(payload.header.channel_header)
    return ch.tx_id


# ---------------------------------------------------------------------------
# Block hash chain (hand-written DER, as Fabric's protoutil.BlockHeaderBytes)
# ---------------------------------------------------------------------------


def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der_tlv(tag, content):
    return bytes([tag]) + der_len(len(content)) + content


def der_integer(v):
    # Minimal two's complement, big-endian.
    if v == 0:
        content = b"\x00"
    elif v > 0:
        content = v.to_bytes(v.bit_length() // 8 + 1, "big")  # room for a sign bit
    else:
        content = v.to_bytes((v + 1).bit_length() // 8 + 1, "big", signed=True)
    return der_tlv(0x02, content)


def header_der(h):
    return der_tlv(
        0x30,
        der_integer(h.number) + der_tlv(0x04, h.previous_hash) + der_tlv(0x04, h.data_hash),
    )


def check_chain(blocks):
    for i, b in enumerate(blocks):
        if b.header.number != blocks[0].header.number + i:
            raise Failure(f"block {i} of the stream has number {b.header.number}, expected {blocks[0].header.number + i}")
        want_data = hashlib.sha256(b"".join(b.data.data)).digest()
        if b.header.data_hash != want_data:
            raise Failure(
                f"block {b.header.number}: data_hash {b.header.data_hash.hex()} != SHA-256(data) {want_data.hex()}"
            )
        if i > 0:
            want_prev = hashlib.sha256(header_der(blocks[i - 1].header)).digest()
            if b.header.previous_hash != want_prev:
                raise Failure(
                    f"block {b.header.number}: previous_hash {b.header.previous_hash.hex()} != "
                    f"SHA-256(DER(header {blocks[i - 1].header.number})) {want_prev.hex()}"
                )


# ---------------------------------------------------------------------------
# gRPC
# ---------------------------------------------------------------------------


def broadcast(pb, stub, envs, timeout):
    import grpc

    responses = []
    try:
        for resp in stub.Broadcast(iter(envs), timeout=timeout):
            responses.append(resp)
    except grpc.RpcError as e:
        raise Failure(f"Broadcast stream failed after {len(responses)} responses: {e.code()} {e.details()}")
    bad = [(i, r.status, r.info) for i, r in enumerate(responses) if r.status != STATUS_SUCCESS]
    if bad:
        i, st, info = bad[0]
        raise Failure(f"Broadcast: {len(bad)} of {len(responses)} responses not SUCCESS; first: #{i} status {st} info {info!r}")
    if len(responses) != len(envs):
        raise Failure(f"Broadcast: sent {len(envs)} envelopes, got {len(responses)} responses")
    return len(responses)


def deliver(pb, stub, signer, channel, want_tx_ids, timeout):
    import grpc

    ab = pb["ab"]
    seek = ab.SeekInfo(
        start=ab.SeekPosition(specified=ab.SeekSpecified(number=0)),
        stop=ab.SeekPosition(specified=ab.SeekSpecified(number=U64_MAX)),
        behavior=ab.SeekInfo.BLOCK_UNTIL_READY,
    )
    _, env = make_envelope(pb, signer, channel, HEADER_TYPE_DELIVER_SEEK_INFO, seek.SerializeToString())

    # Keep the request side open until we are done, so the server never sees a
    # half-close while it is still streaming blocks.
    done = threading.Event()

    def requests():
        yield env
        done.wait()

    call = stub.Deliver(requests(), timeout=timeout)
    blocks = []
    missing = set(want_tx_ids)
    try:
        for resp in call:
            kind = resp.WhichOneof("Type")
            if kind == "block":
                blocks.append(resp.block)
                for d in resp.block.data.data:
                    missing.discard(envelope_tx_id(pb, d))
                if not missing:
                    break
            elif kind == "status":
                raise Failure(
                    f"Deliver ended with status {resp.status} after {len(blocks)} blocks, "
                    f"{len(missing)} tx ids not seen"
                )
            else:
                raise Failure("Deliver: response with neither block nor status")
        else:
            raise Failure(f"Deliver stream closed after {len(blocks)} blocks, {len(missing)} tx ids not seen")
    except grpc.RpcError as e:
        raise Failure(
            f"Deliver stream failed after {len(blocks)} blocks ({len(missing)} tx ids not seen): {e.code()} {e.details()}"
        )
    finally:
        done.set()
        call.cancel()
    return blocks, len(want_tx_ids) - len(missing)


# ---------------------------------------------------------------------------


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_protos = os.path.join(here, "..", "node", "node_modules", "fabric-protos", "protos")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orderer", required=True, help="host:port of the AtomicBroadcast service")
    ap.add_argument("--channel", required=True)
    ap.add_argument("--msp-dir", required=True, help="MSP folder with signcerts/*.pem and keystore/priv_sk")
    ap.add_argument("--mspid", required=True)
    ap.add_argument("--count", type=int, required=True, help="number of envelopes to broadcast")
    ap.add_argument(
        "--protos",
        default=default_protos,
        help="proto root of the npm package fabric-protos (node_modules/fabric-protos/protos)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for each stream")
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count must be at least 1")

    import grpc

    with tempfile.TemporaryDirectory(prefix="fabric-py-") as out_dir:
        pb = compile_protos(resolve_protos_root(args.protos), out_dir)
        signer = Signer(args.msp_dir, args.mspid, pb)

        tx_ids, envs = [], []
        for i in range(args.count):
            data = f"python interop message {i} at {time.time_ns()}".encode()
            tx_id, env = make_envelope(pb, signer, args.channel, HEADER_TYPE_MESSAGE, data)
            tx_ids.append(tx_id)
            envs.append(env)
        if len(set(tx_ids)) != len(tx_ids):
            raise Failure("generated tx ids are not unique")

        opts = [
            ("grpc.max_send_message_length", MAX_MSG),
            ("grpc.max_receive_message_length", MAX_MSG),
        ]
        with grpc.insecure_channel(args.orderer, options=opts) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=args.timeout)
            except grpc.FutureTimeoutError:
                raise Failure(f"cannot connect to {args.orderer} within {args.timeout}s")
            stub = pb["ab_grpc"].AtomicBroadcastStub(channel)
            ok = broadcast(pb, stub, envs, args.timeout)
            blocks, found = deliver(pb, stub, signer, args.channel, tx_ids, args.timeout)

        check_chain(blocks)
        print(json.dumps({"broadcast_ok": ok, "blocks": len(blocks), "found": found, "chain_ok": True}))


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"interop: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # unexpected: still a clean failure with a reason
        import traceback

        traceback.print_exc()
        print(f"interop: FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
