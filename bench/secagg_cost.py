"""Secure aggregation's cost, as ratios to the plaintext path measured in the same run.

Server: CPU time to add one update to the buffer, masked (uint64 ring, integer weight, digest
for the unmask request) vs plaintext (float, weight). Client: time to encode, mask and sign one
update vs one local SGD step of a model of the same size.

Run: .venv/bin/python bench/secagg_cost.py [--sizes 100000,1000000,10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from client_app.masking import mask_update, secagg_context
from strategies.buffer import WeightedSumBuffer
from strategies.ring import MaskedBuffer, RingCodec


def best_of(repeat: int, fn) -> float:
    """The fastest of ``repeat`` timings: the least disturbed by a shared machine."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


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
    print("| parameters | server plaintext add | server masked add | server ratio | client mask+sign "
          "| one local SGD step | client ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        delta = [rng.normal(0, 0.1, n).astype(np.float32)]
        context = secagg_context(1, n)
        masked = mask_update(delta, codec, service, node_key, context)
        plain_seconds = best_of(args.repeat, lambda: WeightedSumBuffer().add(0, delta, 0.7))

        def masked_add() -> None:
            MaskedBuffer(codec, [(n,)]).add(0, masked.masked, weight=45875, ephemeral_public=masked.ephemeral_public,
                                           signature=masked.signature,
                                           node_key_fingerprint=masked.node_key_fingerprint)

        masked_seconds = best_of(args.repeat, masked_add)
        client_seconds = best_of(args.repeat, lambda: mask_update(delta, codec, service, node_key, context))
        step_seconds = local_step_seconds(n, args.repeat)
        print(f"| {n:,} | {plain_seconds * 1e3:.2f} ms | {masked_seconds * 1e3:.2f} ms | "
              f"{masked_seconds / plain_seconds:.2f}× | {client_seconds * 1e3:.1f} ms | "
              f"{step_seconds * 1e3:.1f} ms | {client_seconds / step_seconds:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
