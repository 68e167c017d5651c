"""Model speed, measured side by side with a baseline in one run.

1. M/M/10 at rho = 0.9 (tests/scenarios/mmc-10.yaml): customers simulated per
   second by surgecap's model and by ciw on the same queue and horizon; prints
   the ratio (target: >= 2x).
2. The processor's route (tests/scenarios/mg1-cpu.yaml: a 1 ms station, then
   one gamma step on the server's processor, rho = 0.6): requests per second
   by surgecap's model, the same with the processor following a measured
   speed trace (system.cpu.trace, as validate runs it), and ciw on the same
   tandem queue; prints both ratios.
3. The full-scale Prakerja launch (scenarios/prakerja-launch.yaml, one
   replication): wall time and peak memory of the simulation, in a child
   process so that its peak RSS is its own (targets: <= 120 s, <= 2 GB).

Run: .venv/bin/python benchmarks/bench_sim.py [--skip-full] [--horizon SECONDS] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAMBDA, MU, SERVERS = 9.0, 1.0, 10  # per second; the M/M/c case of the theory tests


def surgecap_mmc(horizon: float) -> tuple[int, float]:
    from models.funnel import simulate_once
    from models.loader import load_scenario

    s = load_scenario(ROOT / "tests" / "scenarios" / "mmc-10.yaml")
    s = s.model_copy(update={"horizon": horizon}).with_run(warmup=0.0, interval=horizon)
    t = time.perf_counter()
    r = simulate_once(s)
    wall = time.perf_counter() - t
    return sum(r.stations["q"].arrivals), wall


def ciw_mmc(horizon: float) -> tuple[int, float]:
    import ciw

    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=LAMBDA)],
        service_distributions=[ciw.dists.Exponential(rate=MU)],
        number_of_servers=[SERVERS],
    )
    ciw.seed(1)
    t = time.perf_counter()
    sim = ciw.Simulation(network)
    sim.simulate_until_max_time(horizon)
    wall = time.perf_counter() - t
    return len(sim.get_all_records()), wall


CPU_RATE, CPU_STEP, CPU_CV, NET = 100.0, 0.006, 1.5, 0.001  # mg1-cpu.yaml: arrivals/s, step mean and cv, station time


def surgecap_cpu(horizon: float, traced: bool) -> tuple[int, float]:
    """Requests through mg1-cpu's station and processor; with ``traced``, a speed trace that changes every second."""
    from models.funnel import simulate_once
    from models.loader import load_scenario

    s = load_scenario(ROOT / "tests" / "scenarios" / "mg1-cpu.yaml")
    s = s.model_copy(update={"horizon": horizon}).with_run(warmup=0.0, interval=horizon)
    if traced and s.system.cpu is not None:
        from models.scenario import CpuTrace

        trace = CpuTrace(every=1.0, factors=[0.9 if k % 2 else 1.1 for k in range(int(horizon) + 1)])
        cpu = s.system.cpu.model_copy(update={"trace": trace})
        s = s.model_copy(update={"system": s.system.model_copy(update={"cpu": cpu})})
    t = time.perf_counter()
    r = simulate_once(s)
    wall = time.perf_counter() - t
    return sum(r.stations["net"].arrivals), wall


def ciw_cpu(horizon: float) -> tuple[int, float]:
    import ciw

    shape = 1.0 / CPU_CV**2
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=CPU_RATE), None],
        service_distributions=[ciw.dists.Deterministic(value=NET), ciw.dists.Gamma(shape=shape, scale=CPU_STEP / shape)],
        number_of_servers=[1000, 1],
        routing=[[0.0, 1.0], [0.0, 0.0]],
    )
    ciw.seed(1)
    t = time.perf_counter()
    sim = ciw.Simulation(network)
    sim.simulate_until_max_time(horizon)
    wall = time.perf_counter() - t
    return len([r for r in sim.get_all_records() if r.node == 1]), wall


def full_day_child() -> None:
    from models.funnel import simulate_once
    from models.loader import load_scenario

    s = load_scenario(ROOT / "scenarios" / "prakerja-launch.yaml")
    t = time.perf_counter()
    r = simulate_once(s)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"registrants": r.meta["registrants"], "wall": wall, "peak_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizon", type=float, default=20000.0, help="simulated seconds of the M/M/10 queue")
    ap.add_argument("--cpu-horizon", type=float, default=1500.0, help="simulated seconds of the processor's route")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of the processor's route (best of each side)")
    ap.add_argument("--skip-full", action="store_true", help="skip the full-scale day")
    ap.add_argument("--full-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.full_child:
        full_day_child()
        return
    print(f"M/M/{SERVERS}, lambda={LAMBDA:g}/s, mu={MU:g}/s, rho={LAMBDA / (SERVERS * MU):.2f}, {args.horizon:g} simulated seconds")
    n_s, w_s = surgecap_mmc(args.horizon)
    n_c, w_c = ciw_mmc(args.horizon)
    rate_s, rate_c = n_s / w_s, n_c / w_c
    print(f"  surgecap: {n_s:>9,} customers in {w_s:6.2f}s = {rate_s:>9,.0f}/s")
    print(f"  ciw:      {n_c:>9,} customers in {w_c:6.2f}s = {rate_c:>9,.0f}/s")
    print(f"  ratio surgecap/ciw: {rate_s / rate_c:.2f}x   (target >= 2x)")
    print(
        f"The processor's route (mg1-cpu: {NET * 1000:g} ms station, then a gamma step of {CPU_STEP * 1000:g} ms, cv {CPU_CV:g}), "
        f"{CPU_RATE:g}/s, {args.cpu_horizon:g} simulated seconds, best of {args.rounds} alternated rounds"
    )
    best: dict[str, tuple[int, float]] = {}
    for _ in range(args.rounds):
        for name, run in (
            ("surgecap", lambda: surgecap_cpu(args.cpu_horizon, False)),
            ("surgecap, traced", lambda: surgecap_cpu(args.cpu_horizon, True)),
            ("ciw", lambda: ciw_cpu(args.cpu_horizon)),
        ):
            n, wall = run()
            if name not in best or wall < best[name][1]:
                best[name] = (n, wall)
    rates = {name: n / wall for name, (n, wall) in best.items()}
    for name, (n, wall) in best.items():
        print(f"  {name + ':':18} {n:>9,} requests in {wall:6.2f}s = {rates[name]:>9,.0f}/s")
    traced = rates["surgecap, traced"] / rates["surgecap"]
    print(f"  ratio surgecap/ciw: {rates['surgecap'] / rates['ciw']:.2f}x   traced/untraced: {traced:.2f}x")
    if args.skip_full:
        return
    print("Full-scale Prakerja launch, one replication (child process)")
    out = subprocess.run([sys.executable, __file__, "--full-child"], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  {res['registrants']:,} registrants simulated in {res['wall']:.1f}s (target <= 120 s), peak RSS {res['peak_mb']:,.0f} MB "
        f"(target <= 2048 MB)"
    )


if __name__ == "__main__":
    main()
