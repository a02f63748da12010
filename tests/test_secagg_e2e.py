"""Secure aggregation end to end with the mask service as a real process on a loopback port.

Real clients mask (mask_service.masking), a server-side masked buffer adds weighted masked
vectors (strategies.ring), and the service (``python -m mask_service``) answers the mask
sum through its gRPC stub; nothing here ever adds a plaintext update on the server side.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from mask_service.client import MaskServiceClient
from mask_service.masking import (
    NODE_SERVICE_FINGERPRINT,
    NODE_SIGNING_KEY,
    NodeSecAggConfig,
    ServiceKeyMismatch,
    mask_update,
    secagg_context,
)
from mask_service.wire import MaskServiceError
from strategies.ring import Contribution, MaskedBuffer, RingCodec
from tests.test_secagg_support import ROOT, contribution_of, make_node, random_update, register

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SHAPES = [(8, 6), (6,), (3, 2)]
LENGTH = sum(int(np.prod(s)) for s in SHAPES)
CODEC = RingCodec(scale_bits=24, clip=8.0, max_weight=4 * 65536, max_summands=64)
K = 4
K_MIN = 3


def staleness_weight(tau: int) -> float:
    return (1.0 + tau) ** -0.5


class ServiceProcess:
    """``python -m mask_service`` on port 0; the ready line tells the address and fingerprint."""

    def __init__(self, state_dir: Path, registry: Path, log_path: Path, k_min: int = K_MIN) -> None:
        self.state_dir, self.registry, self.log_path, self.k_min = state_dir, registry, log_path, k_min
        self.proc: subprocess.Popen | None = None
        self.address = self.fingerprint = ""

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "mask_service", "--state-dir", str(self.state_dir), *extra]

    def start(self) -> ServiceProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(
                "--registered-keys",
                str(self.registry),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--k-min",
                str(self.k_min),
                "--max-weight",
                str(CODEC.max_weight),
                "--max-length",
                "100000",
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)  # the process closed its stdout (it exited)

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        try:
            ready = lines.get(timeout=60)
        except queue.Empty:
            ready = None
        if ready is None:
            self.stop()
            pytest.fail(f"mask service did not start: {self.log_path.read_text()}")
        fields = dict(part.split("=", 1) for part in ready.split()[2:])
        assert ready.startswith("mask-service ready"), ready
        self.address, self.fingerprint = fields["address"], fields["fingerprint"]
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(timeout=15)
        self.proc = None
        self._log.close()
        return rc


class Deployment:
    """Nodes with keys and node configs, the mask service process, and the server's stub."""

    def __init__(self, tmp_path: Path, nodes: int = 6) -> None:
        self.tmp_path = tmp_path
        self.registry = tmp_path / "registered-keys"
        self.nodes = [make_node(tmp_path / "nodes", f"node{i}") for i in range(nodes)]
        for node in self.nodes:
            register(self.registry, node)
        self.service = ServiceProcess(tmp_path / "mask-state", self.registry, tmp_path / "mask-service.log")
        # provisioning: the operator reads the fingerprint once and pins it in every node config
        printed = subprocess.run(
            self.service.command("--print-fingerprint"),
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.pinned = dict(line.split("=", 1) for line in printed.stdout.split())["fingerprint"]
        self.node_configs = [
            {
                "partition-id": i,
                "num-partitions": nodes,
                NODE_SIGNING_KEY: str(node.private_path),
                NODE_SERVICE_FINGERPRINT: self.pinned,
            }
            for i, node in enumerate(self.nodes)
        ]
        self.service.start()
        try:
            assert self.service.fingerprint == self.pinned
            self.client = MaskServiceClient(self.service.address, timeout=60)
            self.client.wait_ready(30)
        except BaseException:
            self.service.stop()
            raise

    def restart_service(self) -> int | None:
        self.client.close()
        rc = self.service.stop()
        self.service.start()
        self.client = MaskServiceClient(self.service.address, timeout=60)
        self.client.wait_ready(30)
        return rc

    def close(self) -> None:
        self.client.close()
        self.service.stop()

    def client_step(self, index: int, delta, relayed_key: bytes, context: bytes):
        """What the ClientApp does: read its node config, check the pin, mask and sign."""
        config = NodeSecAggConfig.from_node_config(self.node_configs[index])
        service_key = config.service_key(relayed_key)
        return mask_update(delta, CODEC, service_key, config.signing_key(), context)


@pytest.fixture
def deployment(tmp_path):
    deploy = Deployment(tmp_path)
    yield deploy
    deploy.close()


def test_async_buffers_unmask_to_the_weighted_sum_of_deltas(deployment):
    """Two FedBuff buffers of K out-of-order, stale updates; drop-outs cost nothing."""
    rng = np.random.default_rng(11)
    relayed = deployment.client.public_key()  # the server relays this in each task
    context = secagg_context(run_id=5, length=LENGTH)
    # (node, staleness): node 5 drops out (its masked update never arrives); node 0 is fast
    arrivals = [(0, 0), (2, 1), (5, None), (1, 0), (3, 2), (0, 1), (4, 3), (2, 0), (1, 4)]
    buffer = MaskedBuffer(CODEC, SHAPES)
    reference = [np.zeros(s) for s in SHAPES]
    float_weights, flushed = [], []
    for node, tau in arrivals:
        delta = random_update(rng, SHAPES)
        update = deployment.client_step(node, delta, relayed, context)
        if tau is None:
            continue  # dropped: the server never sees it, the service is never asked
        weight = staleness_weight(tau)
        q = CODEC.quantize_weight(weight)
        buffer.add(
            node,
            update.masked,
            weight=q,
            ephemeral_public=update.ephemeral_public,
            signature=update.signature,
            node_key_fingerprint=update.node_key_fingerprint,
        )
        float_weights.append(weight)
        for r, d in zip(reference, delta):
            r += weight * d.astype(np.float64)
        if len(buffer) == K:
            mask_sum = deployment.client.unmask(context, buffer.contributions, buffer.length)
            result = buffer.flush(mask_sum)
            assert result.overflow == 0 and result.count == K
            assert result.total_weight == pytest.approx(sum(float_weights), abs=K * 0.5 / CODEC.weight_scale)
            # quantised weights (≤ ½/weight_scale each) and fixed point (≤ ½·2^-scale_bits per term)
            max_abs = max(float(np.max(np.abs(d))) for d in reference) + 4.0
            tolerance = K * (0.5 / CODEC.weight_scale) * max_abs + K * 2.0 ** -(CODEC.scale_bits + 1) * 2
            for got, want in zip(result.total, reference):
                assert np.max(np.abs(got - want)) <= tolerance
            pseudo_gradient = [t / result.count for t in result.total]  # FedBuff's ÷K
            assert all(np.all(np.isfinite(p)) for p in pseudo_gradient)
            flushed.append(result)
            reference = [np.zeros(s) for s in SHAPES]
            float_weights = []
    assert len(flushed) == 2 and len(buffer) == 0


def test_refusals_over_the_wire(deployment, tmp_path):
    rng = np.random.default_rng(2)
    relayed = deployment.client.public_key()
    context = secagg_context(run_id=6, length=LENGTH)

    def contributions(nodes, weight=65536):
        return [
            contribution_of(deployment.client_step(i, random_update(rng, SHAPES), relayed, context), weight)
            for i in nodes
        ]

    def refusal(items, reason, code):
        with pytest.raises(MaskServiceError) as err:
            deployment.client.unmask(context, items, LENGTH)
        assert err.value.reason == reason and err.value.code == code, err.value
        return err.value

    refusal(contributions([0, 1]), "too-few", grpc.StatusCode.FAILED_PRECONDITION)
    good = contributions([0, 1, 2])
    bad = Contribution(
        good[0].ephemeral_public,
        good[0].signature[:-2] + b"\0\0",
        good[0].node_key_fingerprint,
        65536,
    )
    refusal([bad, *good[1:]], "bad-signature", grpc.StatusCode.UNAUTHENTICATED)
    outsider = make_node(tmp_path / "outsiders", "outsider")
    service_key = NodeSecAggConfig.from_node_config(deployment.node_configs[0]).service_key(relayed)
    foreign = contribution_of(mask_update(random_update(rng, SHAPES), CODEC, service_key, outsider.key, context), 65536)
    refusal([foreign, *good[1:]], "unknown-node", grpc.StatusCode.PERMISSION_DENIED)
    heavy = Contribution(
        *[getattr(good[0], f) for f in ("ephemeral_public", "signature", "node_key_fingerprint")],
        CODEC.max_weight + 1,
    )
    refusal([heavy, *good[1:]], "weight-out-of-range", grpc.StatusCode.OUT_OF_RANGE)
    refusal([*good, good[1]], "duplicate-mask", grpc.StatusCode.INVALID_ARGUMENT)
    # none of the refusals burnt a mask
    assert deployment.client.unmask(context, good, LENGTH).shape == (LENGTH,)
    refusal(good, "mask-reused", grpc.StatusCode.ALREADY_EXISTS)


def test_a_used_mask_stays_used_across_a_service_restart(deployment):
    rng = np.random.default_rng(3)
    context = secagg_context(run_id=7, length=LENGTH)
    relayed = deployment.client.public_key()
    used = [
        contribution_of(deployment.client_step(i, random_update(rng, SHAPES), relayed, context), 1000) for i in range(3)
    ]
    deployment.client.unmask(context, used, LENGTH)
    assert deployment.restart_service() == 0  # SIGTERM: a clean exit
    assert deployment.service.fingerprint == deployment.pinned  # same key, nodes need not re-pin
    with pytest.raises(MaskServiceError) as err:
        deployment.client.unmask(context, used, LENGTH)
    assert err.value.reason == "mask-reused"
    # new contributions still work after the restart
    relayed = deployment.client.public_key()
    fresh = [
        contribution_of(deployment.client_step(i, random_update(rng, SHAPES), relayed, context), 1000)
        for i in range(3, 6)
    ]
    assert deployment.client.unmask(context, fresh, LENGTH).shape == (LENGTH,)


def test_client_refuses_a_service_key_the_server_swapped(deployment, tmp_path):
    """A server that relays a key of its own (another service) cannot get clients to use it."""
    impostor = ServiceProcess(tmp_path / "impostor-state", deployment.registry, tmp_path / "impostor.log").start()
    try:
        with MaskServiceClient(impostor.address) as other:
            swapped = other.public_key()
        assert impostor.fingerprint != deployment.pinned
        with pytest.raises(ServiceKeyMismatch, match="does not match"):
            deployment.client_step(
                0, random_update(np.random.default_rng(0), SHAPES), swapped, secagg_context(run_id=8, length=LENGTH)
            )
    finally:
        assert impostor.stop() == 0


def test_bad_state_exits_with_a_message(tmp_path):
    state = tmp_path / "state"
    registry = tmp_path / "missing-registry"
    result = subprocess.run(
        [sys.executable, "-m", "mask_service", "--state-dir", str(state), "--registered-keys", str(registry)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
