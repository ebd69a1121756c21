"""End-to-end training step with the framework adapters (fastlin.torch,
fastlin.jax) against the same model written with the framework's own ops.

The model: proxy-based metric learning on the CPU, float32 -- inputs of
dimension 64, a linear embedding of dimension 64, L2 normalization, the
Euclidean distances to 4096 learned class proxies, log_softmax over the
negated distances and the negative log-likelihood of the labels, backward,
an SGD step.  Batches of 256 and 4096.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE THP_MEM_ALLOC_ENABLE=1 python -m bench.train

Prints the median step time of each version at each batch and thread count,
the speed-up of the fastlin version, and the adapters' per-call overhead
(``fastlin.torch.softmax`` of one row of 8 against ``fastlin.softmax`` of the
same NumPy array, and torch's own).  Targets: fastlin >= 1.5x native torch
per step at batch 4096, never slower at 256; torch adapter overhead < 15 us.
"""
import argparse
import os
import statistics
import time

import numpy as np

D_IN, D_EMB, PROXIES = 64, 64, 4096


def _median_s(f, target=1.0, min_reps=5, max_reps=200):
    f()
    f()
    times, t_end = [], time.perf_counter() + target
    while len(times) < min_reps or (time.perf_counter() < t_end and len(times) < max_reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_steps(batch, threads):
    import torch
    import torch.nn.functional as F

    import fastlin
    import fastlin.torch as ft
    torch.set_num_threads(threads)
    fastlin.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, D_IN, generator=g)
    y = torch.randint(0, PROXIES, (batch,), generator=g)
    out = {}
    for name, (normalize, cdist, log_softmax) in {
            "torch": (lambda e: F.normalize(e, dim=1), torch.cdist,
                      lambda z: torch.log_softmax(z, 1)),
            "torch+fastlin": (lambda e: ft.normalize(e, dim=1), ft.cdist,
                              lambda z: ft.log_softmax(z, 1))}.items():
        W = (torch.randn(D_IN, D_EMB, generator=g) / 8).requires_grad_()
        P = torch.randn(PROXIES, D_EMB, generator=g).requires_grad_()
        opt = torch.optim.SGD([W, P], lr=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            e = normalize(x @ W)
            loss = F.nll_loss(log_softmax(-cdist(e, P)), y)
            loss.backward()
            opt.step()
            return loss
        out[name] = _median_s(step)
    return out


def jax_steps(batch, threads):
    import jax
    import jax.numpy as jnp

    import fastlin
    import fastlin.jax as fj
    fastlin.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, D_IN)), jnp.float32)
    y = jnp.asarray(rng.integers(0, PROXIES, batch))

    def native_cdist(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return jnp.sqrt(jnp.maximum(d2, 0))

    out = {}
    for name, (normalize, cdist, log_softmax) in {
            "jax": (lambda e: e / jnp.linalg.norm(e, axis=1, keepdims=True), native_cdist,
                    lambda z: jax.nn.log_softmax(z, 1)),
            "jax+fastlin": (lambda e: fj.normalize(e, 1), fj.cdist,
                            lambda z: fj.log_softmax(z, 1))}.items():
        def loss_fn(params):
            W, P = params
            e = normalize(x @ W)
            lp = log_softmax(-cdist(e, P))
            return -jnp.take_along_axis(lp, y[:, None], 1).mean()

        @jax.jit
        def update(params):
            grads = jax.grad(loss_fn)(params)
            return tuple(p - 0.1 * gr for p, gr in zip(params, grads))

        params = (jnp.asarray(rng.standard_normal((D_IN, D_EMB)) / 8, jnp.float32),
                  jnp.asarray(rng.standard_normal((PROXIES, D_EMB)), jnp.float32))
        state = [params]

        def step():
            state[0] = update(state[0])
            jax.block_until_ready(state[0])
        out[name] = _median_s(step)
    return out


def adapter_overhead():
    import torch

    import fastlin
    import fastlin.torch as ft
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    t = torch.from_numpy(x)
    return {"fastlin.softmax (NumPy)": _median_s(lambda: fastlin.softmax(x, axis=1), 0.3),
            "fastlin.torch.softmax": _median_s(lambda: ft.softmax(t, 1), 0.3),
            "torch.softmax": _median_s(lambda: torch.softmax(t, 1), 0.3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--threads", default=f"1,{ncpu}" if ncpu > 1 else "1")
    ap.add_argument("--batches", default="256,4096")
    ap.add_argument("--frameworks", default="torch,jax")
    args = ap.parse_args(argv)
    rows, verdicts = [], []
    for fw in args.frameworks.split(","):
        try:
            __import__(fw)
        except ImportError:
            print(f"{fw}: not installed (pip install {fw}); skipped")
            continue
        for batch in map(int, args.batches.split(",")):
            for threads in map(int, args.threads.split(",")):
                r = (torch_steps if fw == "torch" else jax_steps)(batch, threads)
                native, ours = r[fw], r[f"{fw}+fastlin"]
                rows.append((fw, batch, threads, native, ours, native / ours))
                if fw == "torch" and batch >= 4096:
                    verdicts.append((f"torch batch {batch} t={threads}: fastlin >= 1.5x native",
                                     native / ours >= 1.5))
                elif fw == "torch":
                    verdicts.append((f"torch batch {batch} t={threads}: fastlin not slower",
                                     native / ours >= 1.0))
    print(f"\nTraining step (ms; median), model 64 -> 64 -> normalize -> cdist to {PROXIES} "
          "proxies -> log_softmax -> NLL -> SGD, float32")
    print(f"{'framework':<10} {'batch':>6} {'threads':>7} {'native':>10} {'fastlin':>10} "
          f"{'speed-up':>9}")
    for fw, batch, threads, native, ours, sp in rows:
        print(f"{fw:<10} {batch:>6} {threads:>7} {native * 1e3:>10.3f} {ours * 1e3:>10.3f} "
              f"{sp:>8.2f}x")
    if "torch" in args.frameworks.split(","):
        try:
            ov = adapter_overhead()
        except ImportError:
            ov = None
        if ov:
            print("\nPer-call overhead, softmax of one row of 8 float32 (us)")
            for k, v in ov.items():
                print(f"  {k:<26} {v * 1e6:8.1f}")
            extra = ov["fastlin.torch.softmax"] - ov["fastlin.softmax (NumPy)"]
            print(f"  adapter overhead           {extra * 1e6:8.1f}")
            verdicts.append(("torch adapter overhead per call < 15 us", extra < 15e-6))
    if verdicts:
        print("\nTargets")
        for name, ok in verdicts:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")


if __name__ == "__main__":
    main()
