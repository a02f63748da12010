"""Secure aggregation's cost, as ratios to the plaintext path measured in the same run.

Server: CPU time to add one update to the buffer, masked (uint64 ring, integer weight, digest
for the unmask request) vs plaintext (float, weight). Client: time to encode, mask and sign one
update vs one local SGD step of a model of the same size.

Run: .venv/bin/python bench/secagg_cost.py [--sizes 100000,1000000,10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from mask_service.masking import MaskedUpdate, mask_update, secagg_context
from strategies.buffer import WeightedSumBuffer
from strategies.ring import MaskedBuffer, RingCodec

SERVER_GOAL = 1.3  # issue 6: the masked add within 1.3× the plaintext add
CLIENT_GOAL = 0.10  # issue 6: masking within 10% of a 1M-parameter local step


def best_of(repeat: int, fn) -> float:
    """The fastest of ``repeat`` timings: the least disturbed by a shared machine."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def plaintext_add(delta: list[np.ndarray]) -> None:
    """One update into a fresh plaintext buffer (the server's add without secure aggregation)."""
    WeightedSumBuffer().add(0, delta, 0.7)


def masked_add(codec: RingCodec, n: int, masked: MaskedUpdate) -> None:
    """One masked update into a fresh masked buffer (the server's add under secure aggregation)."""
    MaskedBuffer(codec, [(n,)]).add(
        0,
        masked.masked,
        weight=45875,
        ephemeral_public=masked.ephemeral_public,
        signature=masked.signature,
        node_key_fingerprint=masked.node_key_fingerprint,
    )


def local_step_seconds(n: int, repeat: int) -> float:
    """One SGD step (batch 32) of a 2-layer MLP with about ``n`` parameters."""
    hidden = max(1, n // (64 + 10))
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    params = list(model.parameters())

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(g, alpha=0.1)

    step()  # warm-up
    return best_of(repeat, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    codec = RingCodec(max_summands=16)
    service = x25519.X25519PrivateKey.generate().public_key()
    node_key = ec.generate_private_key(ec.SECP384R1())
    server_ratios: dict[int, float] = {}
    client_ratios: dict[int, float] = {}
    print(
        "| parameters | server plaintext add | server masked add | server ratio | client mask+sign "
        "| one local SGD step | client ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        delta = [rng.normal(0, 0.1, n).astype(np.float32)]
        context = secagg_context(1, n)
        masked = mask_update(delta, codec, service, node_key, context)
        plain_seconds = best_of(args.repeat, partial(plaintext_add, delta))
        masked_seconds = best_of(args.repeat, partial(masked_add, codec, n, masked))
        client_seconds = best_of(args.repeat, partial(mask_update, delta, codec, service, node_key, context))
        step_seconds = local_step_seconds(n, args.repeat)
        print(
            f"| {n:,} | {plain_seconds * 1e3:.2f} ms | {masked_seconds * 1e3:.2f} ms | "
            f"{masked_seconds / plain_seconds:.2f}× | {client_seconds * 1e3:.1f} ms | "
            f"{step_seconds * 1e3:.1f} ms | {client_seconds / step_seconds:.2f}× |",
            flush=True,
        )
        server_ratios[n], client_ratios[n] = masked_seconds / plain_seconds, client_seconds / step_seconds
    worst = max(server_ratios.values())
    print(
        f"\nGoal (issue 6): the server's masked add ≤ {SERVER_GOAL:g}× its plaintext add. Where we stand: "
        f"worst {worst:.2f}× — " + ("met." if worst <= SERVER_GOAL else f"missed by {worst / SERVER_GOAL:.1f}×.")
    )
    if 1_000_000 in client_ratios:
        share = client_ratios[1_000_000]
        print(
            f"Goal: client masking ≤ {100 * CLIENT_GOAL:.0f}% of one local SGD step at 1M parameters. Where "
            f"we stand: {100 * share:.0f}% — "
            + ("met." if share <= CLIENT_GOAL else f"missed ({share / CLIENT_GOAL:.0f}× the allowance).")
        )
    print(
        "\nWhat the masked add pays beyond the plaintext one: a SHA-256 of the 8-byte-per-parameter masked "
        "vector (the signature binds it to the client) and a uint64 multiply-add in the ring; the client "
        "pays a ChaCha20 keystream as long as the model, the fixed-point encoding and an ECDSA signature."
    )


if __name__ == "__main__":
    main()
