"""The scenario: one description of a surge that every engine reads.

A scenario file (``scenarios/*.yaml``) says how registrants arrive (the rate
curve), what each one does (the journey), what the system is (stations, the
external registry, the email sender, the batch quota and capacity changes over
time), what counts as good service (SLOs), what capacity costs, and which slice
of it to run.  :func:`load_scenario` reads and validates a file into these typed
objects; any problem raises :class:`ScenarioError` naming the file, the line, the
field path and what was expected.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from models.distributions import Constant, Distribution
from models.units import parse_duration, parse_fraction, parse_rate, parse_size

__all__ = [
    "Scenario",
    "Step",
    "RetryPolicy",
    "Station",
    "Registry",
    "EmailSender",
    "Batch",
    "CapacityChange",
    "System",
    "Slo",
    "Costs",
    "RunSlice",
    "Plan",
    "ServerBounds",
    "RateBounds",
    "ConstantCurve",
    "PiecewiseCurve",
    "LaunchSurgeCurve",
    "FAILURE_REASONS",
]

Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Size = Annotated[float, BeforeValidator(parse_size)]
Probability = Annotated[float, BeforeValidator(parse_fraction), Field(ge=0.0, le=1.0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
NonNegativeDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveRate = Annotated[float, BeforeValidator(parse_rate), Field(gt=0)]

#: Why a request can fail.  ``full``: a station's queue was full (shed, 503);
#: ``abandoned``: the registrant's patience ran out while queued; ``rate_limited``:
#: the registry answered 429; ``timeout``: the registry call took longer than the
#: caller's timeout; ``quota``: the registry's daily quota or the batch quota is
#: used up; ``mismatch``: the registry says the NIK does not match (a typo).
Reason = Literal["full", "abandoned", "rate_limited", "timeout", "quota", "mismatch"]
FAILURE_REASONS: tuple[str, ...] = get_args(Reason)
RETRYABLE_DEFAULT: list[Reason] = ["full", "rate_limited", "timeout"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- arrivals ---------------------------------------------------------------


class ConstantCurve(_Model):
    """A constant arrival rate."""

    shape: Literal["constant"]
    rate: PositiveRate


class PiecewiseCurve(_Model):
    """Rate points ``[time, rate]``; linear between points (or held, with ``interpolation: step``).

    Before the first point the rate is the first point's; after the last, the last's.
    """

    shape: Literal["piecewise"]
    points: list[tuple[Duration, Rate]] = Field(min_length=1)
    interpolation: Literal["linear", "step"] = "linear"

    @model_validator(mode="after")
    def _check(self) -> PiecewiseCurve:
        times = [t for t, _ in self.points]
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError("point times must be strictly increasing")
        if any(r < 0 for _, r in self.points):
            raise ValueError("rates must not be negative")
        if all(r == 0 for _, r in self.points):
            raise ValueError("at least one rate must be positive")
        return self


class LaunchSurgeCurve(_Model):
    """A launch: rise from ``start_rate`` to ``peak`` over ``rise``, hold, decay to ``floor``.

    The decay is exponential with time constant ``decay``.  Give ``total``
    instead of ``decay`` and the decay is solved so that the curve's integral over
    the horizon equals ``total`` arrivals.
    """

    shape: Literal["launch-surge"]
    peak: PositiveRate
    peak_at: Duration = Field(ge=0)
    rise: Duration = Field(default=0.0, ge=0)
    hold: Duration = Field(default=0.0, ge=0)
    start_rate: Rate = Field(default=0.0, ge=0)
    floor: Rate = Field(default=0.0, ge=0)
    decay: PositiveDuration | None = None
    total: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> LaunchSurgeCurve:
        if (self.decay is None) == (self.total is None):
            raise ValueError("give exactly one of 'decay' (a duration) or 'total' (arrivals within the horizon)")
        if self.rise > self.peak_at:
            raise ValueError("rise must not be longer than peak_at (the rise ends at the peak)")
        if self.floor > self.peak or self.start_rate > self.peak:
            raise ValueError("floor and start_rate must not exceed the peak")
        return self


Curve = Annotated[Union[ConstantCurve, PiecewiseCurve, LaunchSurgeCurve], Field(discriminator="shape")]


# --- journey ----------------------------------------------------------------


class RetryPolicy(_Model):
    """What a registrant does after a failed request."""

    max_attempts: int = Field(default=1, ge=1, description="attempts in all, the first included")
    backoff: Duration = Field(default=1.0, ge=0, description="wait before the first retry")
    multiplier: float = Field(default=2.0, ge=1.0, description="each further wait is this many times longer")
    max_backoff: Duration = Field(default=3600.0, ge=0)
    jitter: Probability = Field(default=0.0, description="± share of random spread on each wait")
    give_up: Probability = Field(default=0.0, description="chance to give up after each failure instead of retrying")
    retry_on: list[Reason] = Field(default_factory=lambda: list(RETRYABLE_DEFAULT))


class Step(_Model):
    """One step of the registrant journey."""

    name: str = Field(min_length=1)
    request: str | None = Field(default=None, description="request type; defaults to the step name")
    stations: list[str] = Field(min_length=1, description="stations visited in order for each request")
    think: Distribution = Field(default_factory=lambda: Constant(value=0.0), description="time before the step (after the previous one)")
    proceed: Probability = Field(default=1.0, description="share of those who finished the previous step who go on")
    patience: Distribution | None = Field(default=None, description="how long a registrant waits in a queue")
    timeout: PositiveDuration | None = Field(
        default=30.0,
        description="the client's timeout: a request not answered this long after it was sent fails with 'timeout' (the "
        "server goes on with it); null: the client waits for ever",
    )
    waits_for: str | None = Field(default=None, description="a sender (e.g. email) whose delivery must come first")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    repeat: Probability = Field(default=0.0, description="chance to do the step again after a success")
    quota: Literal["batch"] | None = Field(default=None, description="a quota that each success takes one of")
    payload: Size | None = Field(default=None, description="request body size (e.g. a photo), for the load generator")

    @property
    def request_type(self) -> str:
        return self.request or self.name


# --- system -----------------------------------------------------------------


class Station(_Model):
    """A multi-server FCFS station with a finite queue (admission control past it)."""

    servers: int = Field(ge=1, description="concurrency: requests served at once")
    queue: int | None = Field(default=None, ge=0, description="waiting places; beyond, requests are shed (503)")
    service: dict[str, Distribution] = Field(min_length=1, description="service time per request type ('default' for any)")
    disk: dict[str, NonNegativeDuration] = Field(
        default_factory=dict,
        description="of each request type's service time, the part spent waiting for its database write (queued to committed) "
        "when calibrated; the model does not use it, the validation's cross-check moves the service time by a level's own",
    )

    def service_for(self, request_type: str) -> Distribution | None:
        return self.service.get(request_type, self.service.get("default"))


class Registry(_Model):
    """The external population registry (NIK check), as seen from the server."""

    concurrency: int = Field(ge=1)
    queue: int | None = Field(default=None, ge=0)
    latency: Distribution
    timeout: PositiveDuration = Field(default=10.0, description="the caller's timeout per call")
    rate_limit: PositiveRate | None = Field(default=None, description="calls allowed per second (429 past it)")
    burst: float | None = Field(default=None, gt=0, description="token-bucket size; defaults to one second of rate")
    daily_quota: int | None = Field(default=None, ge=0)
    mismatch: Probability = Field(default=0.0, description="share of checks answered 'does not match'")


class EmailSender(_Model):
    """The outbox sender: delivers emails one after another at ``rate``."""

    rate: PositiveRate


class Batch(_Model):
    """Training batches: a quota of joins per wave."""

    quota: int = Field(ge=0)


class CpuWork(_Model):
    """A request type's work on the server's own processor, one event-loop step at a time."""

    steps: int = Field(ge=1, le=100, description="times a request takes the processor (its event-loop steps and thread work)")
    step: Distribution = Field(description="processor time per step")
    locks: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="times its worker-thread work (in a threaded station) takes back the interpreter lock; "
        "each waits for the processor's current step to end",
    )
    work: Distribution | None = Field(
        default=None,
        description="the request's own computation (e.g. a key stretch): CPU time added to the step in which the event loop "
        "resumes it inside its first station, as the reference server does it",
    )
    resume: Distribution | None = Field(
        default=None,
        description="processor time of a step that resumes the request after it waited for a station's slot (default: "
        "a step's); the reference server times these apart, and they cost far less than its other steps",
    )

    @property
    def demand(self) -> float:
        """Mean processor seconds per request: its steps and its own computation."""
        return self.steps * self.step.mean + (self.work.mean if self.work is not None else 0.0)


class CpuModes(_Model):
    """A processor whose speed alternates between two modes (a virtual machine's CPU shared with other tenants).

    The step times in ``work`` are averages over both modes, as they are
    measured; in the slow mode a step takes ``slow`` times as long as in the
    fast one, for a ``share`` of the time, in spells of exponential length
    (``models.speed`` measures all four on the server's CPU).
    """

    slow: float = Field(ge=1.0, le=10.0, description="a slow-mode step's time over a fast-mode one's")
    share: Probability = Field(description="fraction of the time in the slow mode")
    slow_for: Duration = Field(gt=0, description="mean length of a slow spell")
    fast_for: Duration = Field(gt=0, description="mean length of a fast spell")

    def factors(self) -> tuple[float, float]:
        """(fast, slow) step-time factors, relative to the measured average step time."""
        fast = 1.0 / (1.0 - self.share + self.share * self.slow)
        return fast, fast * self.slow


class CpuTrace(_Model):
    """The processor's speed over time, as measured (``capacity validate`` reads it from the server's fixed work).

    From the window's start, step times are multiplied by ``factors[k]`` for
    ``k x every <= t < (k + 1) x every``; the last factor holds after the end.
    """

    every: PositiveDuration = Field(description="length of each factor's interval")
    factors: list[Annotated[float, Field(gt=0.0, le=10.0)]] = Field(
        min_length=1, max_length=100_000, description="step-time factor in each interval, relative to the step times in work"
    )


class CpuPoint(_Model):
    """The processor's CPU time at one measured utilization, relative to its time at ``measured_at`` (a point of ``Cpu.law``)."""

    at: Probability = Field(description="the processor's utilization (busy share of its cores) this was measured at")
    steps: float = Field(gt=0.0, le=10.0, description="a loop step's CPU time here over its time at measured_at")
    work: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="the requests' own computation's (CpuWork.work) CPU time here, likewise; default: as steps",
    )


def _interpolate(law: list[CpuPoint], u: float, work: bool) -> float:
    """A ``Cpu.law``'s factor at utilization ``u``: linear between its points, the nearest one's outside."""

    def value(p: CpuPoint) -> float:
        return p.work if work and p.work is not None else p.steps

    if u <= law[0].at:
        return value(law[0])
    for a, b in zip(law, law[1:], strict=False):
        if u <= b.at:
            return value(a) + (value(b) - value(a)) * (u - a.at) / (b.at - a.at)
    return value(law[-1])


class CpuReference(_Model):
    """The calibration's processor phase, as ``capacity validate`` reruns it: the same load, length and think times."""

    rate: float = Field(gt=0, description="arrivals per second")
    duration: float = Field(gt=0, description="seconds the phase ran (its first quarter is left out)")
    compress: float = Field(default=1.0, ge=1.0, description="its think-time compression (run.compress)")


class Cpu(_Model):
    """The server process's processor: every request takes it ``steps`` times, first come first served.

    An event-loop server runs each request's work in steps between its waits;
    while one step runs, every other ready step waits.  ``capacity calibrate``
    writes this section from the server's CPU accounting; without it the model
    treats the processor as never busy.
    """

    cores: int = Field(default=1, ge=1, description="processors serving the steps (one per event loop)")
    threads: list[str] = Field(
        default_factory=list,
        description="stations whose work runs in a worker thread: "
        "a visit holds the station while that work waits for and uses the processor",
    )
    work: dict[str, CpuWork] = Field(min_length=1, description="per request type ('default' for any)")
    measured_at: Probability = Field(default=0.0, description="the processor's utilization when the step times were measured")
    background: Probability = Field(
        default=0.0, le=0.5, description="share of the processor the server uses with no load (timers, pollers)"
    )
    speedup: float = Field(
        default=0.0,
        ge=0.0,
        le=1.5,
        description="step times scale by 1 - speedup x (U - measured_at), U the processor's recent utilization "
        "(kept between low_at and measured_at) "
        "(warm caches and shared wake-ups make work cheaper on a busy processor); at least 0.5",
    )

    low_at: Probability = Field(default=0.0, description="the lower utilization the speedup was measured from")
    law: list[CpuPoint] | None = Field(
        default=None,
        min_length=2,
        max_length=20,
        description="CPU time against the processor's utilization, measured at these points (increasing `at`), "
        "separately for the loop's steps and the requests' own computation; interpolated between them, the nearest point "
        "holding outside; replaces speedup and low_at",
    )
    reference: CpuReference | None = Field(
        default=None,
        description="the load the step times were measured at (written by capacity calibrate); capacity validate runs it again "
        "around each level to follow the machine's speed; the model itself does not use it",
    )
    modes: CpuModes | None = Field(default=None, description="a processor whose speed alternates between two modes (see models.speed)")
    trace: CpuTrace | None = Field(default=None, description="the processor's speed over time, as measured (see CpuTrace)")

    @model_validator(mode="after")
    def _law_in_order(self) -> Cpu:
        if self.law is not None and any(b.at <= a.at for a, b in zip(self.law, self.law[1:], strict=False)):
            raise ValueError(f"law: the points' utilizations (at) must increase; got {', '.join(f'{p.at:g}' for p in self.law)}")
        return self

    def factor(self, utilization: float) -> float:
        """A loop step's time at this processor utilization, relative to the measured one.

        With ``law``: interpolated between its points, the nearest one holding
        outside them.  Without: the linear speedup between the two measured
        utilizations (``low_at`` and ``measured_at``), never extrapolated
        (on the reference server the cost per request kept falling beyond the
        working load in some runs and not in others).
        """
        if self.law is not None:
            return _interpolate(self.law, utilization, False)
        u = min(max(utilization, self.low_at), self.measured_at)
        return max(0.5, 1.0 - self.speedup * (u - self.measured_at))

    def work_factor(self, utilization: float) -> float:
        """The requests' own computation's time at this utilization, relative to the measured one (as :meth:`factor`
        without a law, or without the law's ``work``)."""
        if self.law is not None:
            return _interpolate(self.law, utilization, True)
        return self.factor(utilization)

    def work_for(self, request_type: str) -> CpuWork | None:
        return self.work.get(request_type, self.work.get("default"))


class CapacityChange(_Model):
    """A change at time ``at``: a station's servers or queue, the registry's limits, the batch quota."""

    at: Duration = Field(ge=0)
    station: str | None = None
    servers: int | None = Field(default=None, ge=1)
    queue: int | None = Field(default=None, ge=0)
    rate_limit: PositiveRate | None = None
    daily_quota: int | None = Field(default=None, ge=0)
    send_rate: PositiveRate | None = None
    batch_quota: int | None = Field(default=None, ge=0)
    note: str | None = None


class System(_Model):
    stations: dict[str, Station] = Field(default_factory=dict)
    admission: Literal["station", "door"] = Field(
        default="station",
        description="where a request is turned away (503) when a queue is full: 'station', at each station as it gets "
        "there; 'door', before its first station when any station on its route is full (no work is spent on a request "
        "that a later station would shed)",
    )
    overhead: dict[str, Distribution] = Field(
        default_factory=dict,
        description="per request type ('default' for any): time outside every station (network, parsing, "
        "unqueued work), a pure delay; written by calibration",
    )
    cpu: Cpu | None = None
    registry: Registry | None = None
    email: EmailSender | None = None
    batch: Batch | None = None
    changes: list[CapacityChange] = Field(default_factory=list)


# --- SLOs, costs, run slice ---------------------------------------------------


class Slo(_Model):
    """One service-level objective; set exactly one of the limits."""

    name: str | None = None
    request: str | None = Field(default=None, description="a request type; omit for all requests")
    percentile: float | None = Field(default=None, gt=0, lt=100)
    below: Duration | None = Field(default=None, gt=0, description="the latency the percentile must stay under")
    error_rate: Probability | None = None
    abandon_rate: Probability | None = None
    backlog_drained: Duration | None = Field(default=None, gt=0, description="queues empty again within this time")
    station: str | None = Field(default=None, description="with wait_below: the station whose queueing wait is meant")
    wait_below: Duration | None = Field(default=None, gt=0, description="the wait in the station's queue the percentile must stay under")

    @model_validator(mode="after")
    def _check(self) -> Slo:
        limits = [self.below, self.error_rate, self.abandon_rate, self.backlog_drained, self.wait_below]
        if sum(x is not None for x in limits) != 1:
            raise ValueError(
                "set exactly one of: below (with percentile), error_rate, abandon_rate, backlog_drained, wait_below (with station)"
            )
        if (self.below is not None or self.wait_below is not None) != (self.percentile is not None):
            raise ValueError("'percentile' goes with 'below' or 'wait_below', e.g. percentile: 95, below: 2s")
        if (self.wait_below is None) != (self.station is None):
            raise ValueError("'station' and 'wait_below' go together, e.g. station: agents, percentile: 80, wait_below: 20s")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        from models.units import format_duration

        what = self.request or "all requests"
        if self.wait_below is not None:
            return f"{self.station} wait p{self.percentile:g} < {format_duration(self.wait_below)}"
        if self.below is not None:
            return f"{what} p{self.percentile:g} < {format_duration(self.below)}"
        if self.error_rate is not None:
            return f"{what} error rate < {self.error_rate:.2%}"
        if self.abandon_rate is not None:
            return f"{what} abandonment < {self.abandon_rate:.2%}"
        return f"backlog drained within {format_duration(self.backlog_drained or 0)}"


class ServerBounds(_Model):
    """How many servers a station may have in a plan."""

    min: int = Field(default=1, ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> ServerBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class RateBounds(_Model):
    """A rate a plan may buy or negotiate (the email send rate, the registry's rate limit): between min and max."""

    min: PositiveRate | None = None
    max: PositiveRate

    @model_validator(mode="after")
    def _check(self) -> RateBounds:
        if self.min is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class Plan(_Model):
    """What ``capacity plan`` may change, within which bounds, and how it confirms a plan."""

    stations: dict[str, ServerBounds] = Field(
        default_factory=dict, description="servers per station; a station not named may have 1 to max(256, 8 x its configured servers)"
    )
    schedule: Duration = Field(default=3600.0, ge=0, description="the capacity schedule's step (0: a static size only)")
    email_rate: RateBounds | None = Field(default=None, description="the outbox send rate the plan may choose (default: as configured)")
    registry_rate_limit: RateBounds | None = Field(default=None, description="the registry's rate limit the plan may ask for")
    replications: int = Field(default=3, ge=2, le=50, description="simulation replications that confirm a plan")
    rounds: int = Field(default=4, ge=1, le=20, description="simulation rounds at most (confirming, raising, trying cheaper)")
    descend: bool = Field(default=True, description="try one server fewer at the costliest station by simulation once a plan holds")
    target: float = Field(default=0.85, gt=0, lt=1, description="the screen never plans a station busier than this in any interval")


class ReferenceServer(_Model):
    """How the reference server plays this system beyond its stations; the model does not read it (calibration measures it)."""

    work: dict[str, int] = Field(
        default_factory=dict,
        description="real CPU work per request type: rounds of iterated SHA-256 (a key stretch, about 0.35 us a round), "
        "run on the server's event loop inside the request's first station",
    )


class Costs(_Model):
    currency: str = "USD"
    per_unit_hour: dict[str, float] = Field(default_factory=dict, description="price of one server of a station per hour")


class RunSlice(_Model):
    """Which part of the scenario to run, and how."""

    window: tuple[Duration, Duration] | None = Field(default=None, description="[start, end]; default the horizon")
    scale: Probability = Field(default=1.0, description="share of arrivals kept")
    compress: float = Field(default=1.0, ge=1.0, description="think times and retry backoffs are divided by this")
    warmup: Duration = Field(default=0.0, ge=0, description="start of the window simulated but not counted")
    interval: PositiveDuration = Field(default=60.0, description="aggregation interval of the results")
    drain: Duration = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="after the window, the requests sent in it are followed to their end for up to this long and counted "
        "in the interval they were sent, as the load generator does (it waits 10 s); none is sent after the window",
    )


class Tolerances(_Model):
    """How close the model must come to a measured run (``capacity validate``)."""

    throughput: Probability = Field(default=0.05, description="relative, per request type and funnel step")
    p50: Probability = Field(default=0.10, description="relative")
    p95: Probability = Field(default=0.15, description="relative")
    p99: Probability | None = Field(default=None, description="relative; unset: p99 is shown, not judged")
    utilization: Probability = Field(default=0.05, description="absolute, per station")
    error_rate: Probability = Field(default=0.01, description="absolute (percentage points as a fraction), also shed and abandonment")
    queue_growth: Probability = Field(default=0.25, description="relative, at overload levels")
    completion: Probability = Field(
        default=0.10,
        description="relative: a funnel step's completion time (first attempt to success, retries included), p50 and p95, "
        "at overload levels",
    )
    min_samples: int = Field(default=100, ge=1, description="fewer requests than this: the figure is shown, not judged")
    near_knee: KneeTolerances | None = Field(
        default=None, description="wider latency tolerances for levels from near_knee.at up to saturation (1.0)"
    )

    def at(self, fraction: float) -> Tolerances:
        """The tolerances for a level at ``fraction`` of the saturation rate."""
        k = self.near_knee
        if k is None or not k.at <= fraction <= 1.0:
            return self
        return self.model_copy(update={"p50": k.p50, "p95": k.p95})


class KneeTolerances(_Model):
    """Near the knee a 2 % error in demand moves the wait by tens of percent: the latency tolerances there."""

    at: float = Field(default=0.9, gt=0, le=1.0, description="the lowest level (fraction of saturation) they apply to")
    p50: Probability = Field(default=0.20, description="relative")
    p95: Probability = Field(default=0.20, description="relative")


class Validation(_Model):
    """Settings of ``capacity validate`` for this scenario."""

    levels: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [0.3, 0.6, 0.9], description="fractions of the saturation rate"
    )
    duration: PositiveDuration = Field(default=60.0, description="measured seconds per level (at least)")
    samples: int = Field(
        default=300,
        ge=0,
        description="a level runs longer than duration, up to 4x, until the rarest request type can reach this many requests: "
        "a percentile from 100 requests misses by its sampling error alone (p50: 6 %, one standard deviation) as often as by the model",
    )
    tolerances: Tolerances = Field(default_factory=Tolerances)


class Reported(_Model):
    """Real-world figures to show beside the model (funnel step name → count)."""

    at: Duration
    source: str
    counts: dict[str, int]


def _threshold_text(text: str) -> str:
    from models.thresholds import parse_threshold

    parse_threshold("all" if not text.strip().startswith("arrivals_") else "run", text)  # the form; the subject is checked later
    return text


ThresholdText = Annotated[str, AfterValidator(_threshold_text)]


class Scenario(_Model):
    """A whole scenario, validated.  ``path`` is where it was read from."""

    name: str
    description: str = ""
    seed: int = Field(default=1, ge=0)
    horizon: PositiveDuration
    arrivals: Curve
    journey: list[Step] = Field(min_length=1)
    system: System
    slos: list[Slo] = Field(default_factory=list)
    costs: Costs = Field(default_factory=Costs)
    run: RunSlice = Field(default_factory=RunSlice)
    reported: Reported | None = None
    validation: Validation = Field(default_factory=Validation)
    plan: Plan = Field(default_factory=Plan)
    reference_server: ReferenceServer = Field(default_factory=ReferenceServer)
    thresholds: dict[str, list[ThresholdText]] = Field(
        default_factory=dict,
        description="pass/fail criteria per request type ('all': every type together; 'run': the load generator), "
        "e.g. register: [p95 < 500ms, error_rate < 1%]; see models.thresholds",
    )
    path: str | None = Field(default=None, exclude=True)

    @property
    def threshold_list(self) -> list[Any]:
        """The thresholds, parsed (:class:`models.thresholds.Threshold`)."""
        from models.thresholds import parse_threshold

        return [parse_threshold(subject, text) for subject, texts in self.thresholds.items() for text in texts]

    @property
    def window(self) -> tuple[float, float]:
        return self.run.window if self.run.window is not None else (0.0, self.horizon)

    def step(self, name: str) -> Step:
        for step in self.journey:
            if step.name == name:
                return step
        raise KeyError(name)

    def overhead_for(self, request_type: str) -> Distribution | None:
        o = self.system.overhead
        return o.get(request_type, o.get("default"))

    @property
    def request_types(self) -> list[str]:
        seen: dict[str, None] = {}
        for step in self.journey:
            seen.setdefault(step.request_type, None)
        return list(seen)

    @property
    def station_names(self) -> list[str]:
        names = list(self.system.stations)
        if self.system.cpu is not None:
            names.append(CPU)
        if self.system.registry is not None:
            names.append(REGISTRY)
        if self.system.email is not None:
            names.append(EMAIL)
        return names

    def with_run(self, **changes: object) -> Scenario:
        """A copy with some run-slice fields replaced (e.g. ``scale=0.1``)."""
        return self.model_copy(update={"run": self.run.model_copy(update=changes)})


REGISTRY = "registry"
EMAIL = "email"
CPU = "cpu"


def semantic_errors(s: Scenario) -> list[tuple[tuple[object, ...], str]]:
    """Cross-field checks that a field-by-field schema cannot express."""
    return _journey_errors(s) + _system_errors(s) + _change_errors(s) + _run_errors(s)


def _journey_errors(s: Scenario) -> list[tuple[tuple[object, ...], str]]:
    """Steps: unique names, known stations with service times, deliveries and quotas that exist."""
    errors: list[tuple[tuple[object, ...], str]] = []
    stations = s.system.stations
    for name in (REGISTRY, EMAIL, CPU):
        if name in stations:
            errors.append((("system", "stations", name), f"'{name}' is reserved for system.{name}; rename the station"))
    known = set(s.station_names) - {EMAIL, CPU}  # the processor is visited by every request, never named in a step
    seen_steps: set[str] = set()
    for i, step in enumerate(s.journey):
        where: tuple[object, ...] = ("journey", i)
        if step.name in seen_steps:
            errors.append(((*where, "name"), f"duplicate step name {step.name!r}"))
        seen_steps.add(step.name)
        for j, st in enumerate(step.stations):
            if st not in known:
                hint = f"; expected one of {', '.join(sorted(known))}" if known else "; system.stations is empty"
                errors.append(((*where, "stations", j), f"unknown station {st!r}{hint}"))
            elif st in stations and stations[st].service_for(step.request_type) is None:
                errors.append(
                    (
                        (*where, "stations", j),
                        f"station {st!r} has no service time for request {step.request_type!r} "
                        f"(add system.stations.{st}.service.{step.request_type} or a 'default')",
                    )
                )
        if step.waits_for is not None and step.waits_for != EMAIL:
            errors.append(((*where, "waits_for"), f"unknown sender {step.waits_for!r}; expected 'email'"))
        elif step.waits_for == EMAIL and s.system.email is None:
            errors.append(((*where, "waits_for"), "step waits for email but system.email is not set"))
        if step.waits_for is not None and i == 0:
            errors.append(((*where, "waits_for"), "the first step cannot wait for a delivery"))
        if step.quota == "batch" and s.system.batch is None:
            errors.append(((*where, "quota"), "step takes a batch quota but system.batch is not set"))
    return errors


def _system_errors(s: Scenario) -> list[tuple[tuple[object, ...], str]]:
    """Overheads and the processor: known request types and stations."""
    errors: list[tuple[tuple[object, ...], str]] = []
    stations = s.system.stations
    for name, st in stations.items():
        for rt in st.disk:
            if rt not in s.request_types:
                errors.append(
                    (("system", "stations", name, "disk", rt), f"unknown request type {rt!r}; expected one of {', '.join(s.request_types)}")
                )
    for rt in s.system.overhead:
        if rt != "default" and rt not in s.request_types:
            errors.append(
                (("system", "overhead", rt), f"unknown request type {rt!r}; expected 'default' or one of {', '.join(s.request_types)}")
            )
    if s.system.cpu is not None:
        if s.system.cpu.low_at > s.system.cpu.measured_at:
            errors.append(
                (
                    ("system", "cpu", "low_at"),
                    f"low_at ({s.system.cpu.low_at:g}) must not exceed measured_at ({s.system.cpu.measured_at:g})",
                )
            )
        for j, name in enumerate(s.system.cpu.threads):
            if name not in stations:
                errors.append((("system", "cpu", "threads", j), f"unknown station {name!r}; expected one of {', '.join(sorted(stations))}"))
        for rt in s.system.cpu.work:
            if rt != "default" and rt not in s.request_types:
                errors.append(
                    (
                        ("system", "cpu", "work", rt),
                        f"unknown request type {rt!r}; expected 'default' or one of {', '.join(s.request_types)}",
                    )
                )
    return errors


def _change_errors(s: Scenario) -> list[tuple[tuple[object, ...], str]]:
    """Capacity changes: within the horizon, on something that exists, changing something."""
    errors: list[tuple[tuple[object, ...], str]] = []
    known = set(s.station_names) - {EMAIL, CPU}
    changeable = known | ({CPU} if s.system.cpu is not None else set())
    for k, ch in enumerate(s.system.changes):
        where = ("system", "changes", k)
        if ch.at > s.horizon:
            errors.append(((*where, "at"), f"change at {ch.at:g}s is after the horizon ({s.horizon:g}s)"))
        station_fields = {"servers": ch.servers, "queue": ch.queue}
        registry_fields = {"rate_limit": ch.rate_limit, "daily_quota": ch.daily_quota}
        if ch.station is None:
            for field, v in {**station_fields, **registry_fields}.items():
                if v is not None:
                    errors.append(((*where, field), f"'{field}' needs 'station' to say what it changes"))
        elif ch.station not in changeable:
            errors.append(((*where, "station"), f"unknown station {ch.station!r}; expected one of {', '.join(sorted(changeable))}"))
        elif ch.station != REGISTRY:
            for field, v in registry_fields.items():
                if v is not None:
                    errors.append(((*where, field), f"'{field}' applies only to station 'registry'"))
        if ch.send_rate is not None and s.system.email is None:
            errors.append(((*where, "send_rate"), "send_rate changes the email sender, but system.email is not set"))
        if ch.batch_quota is not None and s.system.batch is None:
            errors.append(((*where, "batch_quota"), "batch_quota changes the batch, but system.batch is not set"))
        if all(v is None for v in (ch.servers, ch.queue, ch.rate_limit, ch.daily_quota, ch.send_rate, ch.batch_quota)):
            errors.append((where, "a change must set at least one of servers, queue, rate_limit, daily_quota, send_rate, batch_quota"))
    return errors


def _threshold_errors(s: Scenario) -> list[tuple[tuple[object, ...], str]]:
    """Thresholds: a known subject, and metrics that the subject has."""
    from models.thresholds import parse_threshold

    errors: list[tuple[tuple[object, ...], str]] = []
    for subject, texts in s.thresholds.items():
        if subject not in ("all", "run") and subject not in s.request_types:
            known = ", ".join(s.request_types)
            errors.append((("thresholds", subject), f"unknown request type {subject!r}; expected 'all', 'run' or one of {known}"))
            continue
        for k, text in enumerate(texts):
            try:
                parse_threshold(subject, text)
            except ValueError as exc:
                errors.append((("thresholds", subject, k), str(exc)))
    return errors


MAX_HORIZON = 31 * 86400.0  # seconds: a month; the arrival sampler works second by second
MAX_PAYLOAD = 20e6  # bytes: the load generator builds each upload in memory


def _run_errors(s: Scenario) -> list[tuple[tuple[object, ...], str]]:
    """The run slice, SLOs, costs and reported figures, and sizes the machine cannot hold."""
    errors: list[tuple[tuple[object, ...], str]] = []
    if s.horizon > MAX_HORIZON:
        errors.append((("horizon",), f"{s.horizon / 86400:,.0f} days; a scenario spans at most 31 days"))
    for i, step in enumerate(s.journey):
        if step.payload is not None and step.payload > MAX_PAYLOAD:
            errors.append((("journey", i, "payload"), f"{step.payload / 1e6:,.0f} MB; an upload is at most 20 MB"))
    seen_steps = {step.name for step in s.journey}
    start, end = s.window
    if not (0 <= start < end <= s.horizon):
        errors.append(
            (("run", "window"), f"window [{start:g}s, {end:g}s] must lie within the scenario [0s, {s.horizon:g}s] and end after it starts")
        )
    elif s.run.warmup >= end - start:
        errors.append((("run", "warmup"), "warmup must be shorter than the window"))
    for k, slo in enumerate(s.slos):
        if slo.station is not None and slo.station not in s.system.stations:
            errors.append(
                (("slos", k, "station"), f"unknown station {slo.station!r}; expected one of {', '.join(sorted(s.system.stations))}")
            )
        if slo.request is not None and slo.request not in s.request_types:
            errors.append((("slos", k, "request"), f"unknown request type {slo.request!r}; expected one of {', '.join(s.request_types)}"))
    errors += _threshold_errors(s)
    for rt, rounds in s.reference_server.work.items():
        if rt not in s.request_types:
            errors.append((("reference_server", "work", rt), f"unknown request type {rt!r}; expected one of {', '.join(s.request_types)}"))
        elif not 0 <= rounds <= 10_000_000:
            errors.append((("reference_server", "work", rt), f"{rounds:,} rounds; expected 0 to 10,000,000 (about 4 s of CPU)"))
    for name in s.plan.stations:
        if name not in s.system.stations:
            errors.append((("plan", "stations", name), f"unknown station {name!r}; expected one of {', '.join(sorted(s.system.stations))}"))
    if s.plan.email_rate is not None and s.system.email is None:
        errors.append((("plan", "email_rate"), "plan.email_rate needs system.email"))
    if s.plan.registry_rate_limit is not None and s.system.registry is None:
        errors.append((("plan", "registry_rate_limit"), "plan.registry_rate_limit needs system.registry"))
    for name in s.costs.per_unit_hour:
        if name not in s.station_names:
            errors.append((("costs", "per_unit_hour", name), f"unknown station {name!r}"))
    for station, price in s.costs.per_unit_hour.items():
        if not math.isfinite(price) or price < 0:
            errors.append((("costs", "per_unit_hour", station), "a price must be a non-negative number"))
    if s.reported is not None:
        for name in s.reported.counts:
            if name not in seen_steps:
                errors.append((("reported", "counts", name), f"unknown step {name!r}"))
    return errors
