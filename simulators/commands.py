"""`edge-gateway simulate`: play a scenario, check the gateway's reactions, or generate load."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Simulated devices: play a scenario against a broker, check the gateway, or load it.",
    invoke_without_command=True,
)
console = Console(soft_wrap=True)  # check results are read by scripts: no wrapping
err = Console(stderr=True, soft_wrap=True)

HostOption = Annotated[str, typer.Option(envvar="EDGE_GATEWAY_MQTT_HOST", help="Broker host.")]
PortOption = Annotated[int, typer.Option(envvar="EDGE_GATEWAY_MQTT_PORT", help="Broker port.")]


@app.callback()
def simulate(
    ctx: typer.Context,
    scenario: Annotated[
        str | None,
        typer.Option("--scenario", "-s", help="Scenario file, or a bundled name (demo-home)."),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 1883,
    speed: Annotated[
        float | None, typer.Option(help="Simulated seconds per wall second (default: scenario).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: scenario).")] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Wait for the scenario's expected messages; exit 1 listing misses."
        ),
    ] = False,
    fast: Annotated[
        bool, typer.Option("--fast", help="Ignore the clock: publish as fast as the broker takes.")
    ] = False,
    list_scenarios: Annotated[
        bool, typer.Option("--list", help="List the bundled scenarios.")
    ] = False,
) -> None:
    """Play a scenario: `edge-gateway simulate --scenario demo-home [--check]`."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.errors import GatewayError
    from simulators.runner import ScenarioRunner
    from simulators.scenario import SCENARIO_DIR, load_scenario

    if list_scenarios:
        for path in sorted(SCENARIO_DIR.glob("*.yaml")):
            try:
                described = load_scenario(path).description
            except GatewayError as exc:
                described = f"(invalid: {exc})"
            console.print(f"{path.stem:20} {described}", highlight=False)
        return
    if scenario is None:
        console.print(ctx.get_help())
        raise typer.Exit(2)
    logging.basicConfig(level=logging.WARNING)
    try:
        plan = load_scenario(scenario)
    except GatewayError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    runner = ScenarioRunner(
        plan, host, port, seed=seed, speed=speed, realtime=not fast, check=check
    )
    pace = "as fast as possible" if fast and not check else f"at {runner.speed:g}x"
    console.print(
        f"playing [bold]{plan.name}[/bold] ({len(runner.sim.slots)} devices, seed "
        f"{runner.sim.seed}) {pace} against {host}:{port}",
        highlight=False,
    )
    stop = threading.Event()
    try:
        report = runner.run(stop)
    except (ConnectionError, OSError) as exc:
        err.print(f"[bold red]error:[/bold red] broker {host}:{port}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stop.set()
        raise typer.Exit(130) from None
    faults = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    console.print(
        f"published {report.published} messages over {report.sim_seconds:.0f}s simulated "
        f"({report.wall_seconds:.1f}s wall); {faults or 'no events'}",
        highlight=False,
    )
    if check:
        for line in report.met:
            console.print(f"[green]met[/green]    {line}", highlight=False)
        for line in report.missed:
            console.print(f"[red]missed[/red] {line}", highlight=False)
        if report.missed:
            raise typer.Exit(1)


@app.command()
def load(
    host: HostOption = "127.0.0.1",
    port: PortOption = 1883,
    devices: Annotated[int, typer.Option(help="Distinct devices (topics).")] = 1000,
    rate: Annotated[
        float, typer.Option(help="Total messages per second; 0 = as fast as possible.")
    ] = 0.0,
    processes: Annotated[int, typer.Option(help="Publishing processes.")] = 2,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    qos: Annotated[int, typer.Option(help="0 or 1 (1 counts only acknowledged messages).")] = 0,
    site: Annotated[str, typer.Option(help="Topics are sensors/<site>/dev-NNNNNN/temperature.")] = (
        "load"
    ),
    payload: Annotated[
        str, typer.Option(help="plain (21.53), json (value and unit) or zigbee2mqtt (a state).")
    ] = "plain",
) -> None:
    """Publish load from several processes; prints the achieved rate once a second."""
    from simulators.load import PAYLOADS, LoadSpec, run_load

    if qos not in (0, 1):
        err.print("[bold red]error:[/bold red] --qos must be 0 or 1")
        raise typer.Exit(2)
    if payload not in PAYLOADS:
        err.print(f"[bold red]error:[/bold red] --payload must be one of {', '.join(PAYLOADS)}")
        raise typer.Exit(2)
    if duration is None and count is None:
        duration = 10.0

    def report(elapsed: float, last: int, total: int, errors: int) -> None:
        console.print(
            f"{elapsed:6.1f}s  {last:>10,} msg/s  total {total:>12,}  errors {errors}",
            highlight=False,
        )

    spec = LoadSpec(host, port, devices, rate, processes, duration, count, qos, site, payload)
    try:
        summary = run_load(spec, report)
    except (ConnectionError, OSError) as exc:
        err.print(f"[bold red]error:[/bold red] broker {host}:{port}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(
        f"sent {summary.sent:,} messages (QoS {qos}) in {summary.seconds:.1f}s: "
        f"{summary.rate:,.0f} msg/s, {summary.errors} errors",
        highlight=False,
    )
    if summary.errors:
        raise typer.Exit(1)
