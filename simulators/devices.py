"""Device profiles: rooms with simple physics and the sensors and actuators that live in them.

Everything here is a pure function of simulated time, the scenario's seed and the commands
received: no clock reads and no I/O, so a fixed seed gives the same readings every run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

SampleValue = float | bool | str


@dataclass(slots=True, frozen=True)
class Sample:
    """One metric a device reports: `temperature` = 21.5 °C, `occupancy` = True, `state` = "ON"."""

    metric: str
    value: SampleValue
    unit: str | None = None


def _day_fraction(t: float) -> float:
    """Time of day in [0, 1) for epoch seconds (scenario times are UTC)."""
    return (t % 86400.0) / 86400.0


def daylight(t: float) -> float:
    """Outdoor light in lux: zero at night, a sine arch from 07:00 to 19:00 peaking near 20 klx."""
    hour = _day_fraction(t) * 24
    if hour < 7 or hour > 19:
        return 0.0
    return 20_000.0 * math.sin(math.pi * (hour - 7) / 12)


def outdoor_temperature(t: float) -> float:
    """A daily cycle: coldest near 05:00, warmest near 15:00, around 8 °C."""
    return 8.0 + 5.0 * math.sin(2 * math.pi * (_day_fraction(t) - 10 / 24))


class Room:
    """Shared state of one room or production line, advanced in fixed steps of simulated time."""

    STEP = 10.0  # seconds of simulated time per integration step

    def __init__(self, name: str, t: float, base_temperature: float = 20.0) -> None:
        self.name = name
        self.t = t
        self.base_temperature = base_temperature
        self.temperature = base_temperature
        self.humidity = 45.0
        self.co2 = 450.0
        self.setpoint: float | None = None  # a thermostat's target; None means no heating
        self.occupied_until = -math.inf
        self.last_movement = -math.inf
        self.light_on = False
        self.fire = False
        self.leaking = False
        self.water_supply = True  # a valve in the room closes it
        self.dry_at = -math.inf  # when the floor is dry again after the water stopped

    def occupied(self, t: float) -> bool:
        return t < self.occupied_until

    def heating(self) -> bool:
        return self.setpoint is not None and self.temperature < self.setpoint

    def advance(self, t: float) -> None:
        while self.t < t:
            dt = min(self.STEP, t - self.t)
            self.t += dt
            outdoor = outdoor_temperature(self.t)
            # Unheated rooms drift towards a mix of outdoor and building temperature (tau 2 h);
            # a thermostat pulls the room to its setpoint much faster (tau 20 min).
            target = 0.25 * outdoor + 0.75 * self.base_temperature
            tau = 7200.0
            if self.setpoint is not None:
                target, tau = self.setpoint, 1200.0
            if self.fire:
                target, tau = 90.0, 300.0
            self.temperature += (target - self.temperature) * (1 - math.exp(-dt / tau))
            humidity_target = 45.0 + 10.0 * math.cos(2 * math.pi * _day_fraction(self.t))
            self.humidity += (humidity_target - self.humidity) * (1 - math.exp(-dt / 3600.0))
            occupied = self.occupied(self.t)
            co2_target = 1400.0 if occupied else 420.0
            self.co2 += (co2_target - self.co2) * (
                1 - math.exp(-dt / (1800.0 if occupied else 3600.0))
            )
            if self.leaking and not self.water_supply:
                self.leaking = False
                self.dry_at = self.t + 30.0


class Device:
    """A sensor or actuator. `sample` is its periodic report; `act` applies a timeline event;
    `command` a received MQTT command. Each returns the samples to publish now."""

    profile: ClassVar[str] = ""
    actions: ClassVar[tuple[str, ...]] = ()
    commandable: ClassVar[bool] = False
    battery_powered: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        room: Room,
        rng: random.Random,
        t: float,
        params: dict[str, Any],
        battery: bool | None = None,
    ) -> None:
        self.name = name
        self.room = room
        self.rng = rng
        self.params = params
        self.battery = (
            rng.uniform(70.0, 100.0)
            if (battery if battery is not None else self.battery_powered)
            else None
        )
        self.battery_t = t
        self.drain_per_day = float(params.get("battery_drain_per_day", 0.5))

    def _battery(self, t: float) -> list[Sample]:
        if self.battery is None:
            return []
        self.battery = max(0.0, self.battery - self.drain_per_day * (t - self.battery_t) / 86400.0)
        self.battery_t = t
        return [Sample("battery", round(self.battery, 1), "%")]

    def sample(self, t: float) -> list[Sample]:
        self.room.advance(t)
        return self.read(t) + self._battery(t)

    def read(self, t: float) -> list[Sample]:
        raise NotImplementedError

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        raise ValueError(f"device {self.name!r} ({self.profile}) has no action {action!r}")

    def command(self, t: float, payload: str) -> list[Sample]:
        return []

    def tick(self, t: float) -> list[Sample]:
        """Reports due to state changing by itself (motion cooldown, a leak drying)."""
        return []


def _noise(rng: random.Random, sigma: float) -> float:
    return rng.gauss(0.0, sigma)


class Climate(Device):
    """Temperature and humidity: the room's trajectory plus sensor noise and slow drift."""

    profile = "climate"
    battery_powered = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drift = 0.0

    def read(self, t: float) -> list[Sample]:
        self.drift += _noise(self.rng, 0.002)  # a random walk: sensors age
        temperature = self.room.temperature + self.drift + _noise(self.rng, 0.05)
        humidity = min(100.0, max(0.0, self.room.humidity + _noise(self.rng, 0.3)))
        return [
            Sample("temperature", round(temperature, 2), "°C"),
            Sample("humidity", round(humidity, 1), "%"),
        ]


class Thermostat(Device):
    """Holds a setpoint (°C); a numeric command changes it, `OFF` stops heating."""

    profile = "thermostat"
    commandable = True
    actions = ("set",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "setpoint" in self.params:
            self.room.setpoint = float(self.params["setpoint"])

    def read(self, t: float) -> list[Sample]:
        setpoint = self.room.setpoint
        return [
            Sample("setpoint", setpoint if setpoint is not None else 0.0, "°C"),
            Sample("heating", self.room.heating()),
        ]

    def command(self, t: float, payload: str) -> list[Sample]:
        self.room.advance(t)
        word = payload.strip().upper()
        if word == "OFF":
            self.room.setpoint = None
        else:
            try:
                self.room.setpoint = float(word)
            except ValueError:
                return []
        return self.read(t)

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        if action != "set":
            return super().act(t, action, duration, value)
        return self.command(t, str(value))


class Illuminance(Device):
    """Indoor light in lux: a share of daylight, plus the room's lamp when it is on."""

    profile = "lux"
    battery_powered = True

    def read(self, t: float) -> list[Sample]:
        window = float(self.params.get("window", 0.02))
        lux = daylight(t) * window + (250.0 if self.room.light_on else 0.0)
        lux = max(0.0, lux * (1 + _noise(self.rng, 0.03)) + abs(_noise(self.rng, 0.5)))
        return [Sample("illuminance", round(lux, 1), "lx")]


class Motion(Device):
    """PIR motion: `occupancy` true on movement, false after `cooldown` seconds without any."""

    profile = "motion"
    battery_powered = True
    actions = ("arrive", "leave", "move")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cooldown = float(self.params.get("cooldown", 60.0))
        self.reported = False
        self.next_move = math.inf

    def _occupancy(self, t: float) -> bool:
        return t < self.room.last_movement + self.cooldown

    def read(self, t: float) -> list[Sample]:
        self.reported = self._occupancy(t)
        return [Sample("occupancy", self.reported)]

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        if action == "arrive":
            self.room.occupied_until = t + (duration if duration is not None else 600.0)
            return self._move(t)
        if action == "leave":
            self.room.occupied_until = t
            return []
        if action == "move":
            return self._move(t)
        return super().act(t, action, duration, value)

    def _move(self, t: float) -> list[Sample]:
        self.room.last_movement = t
        self.next_move = t + self.rng.expovariate(1 / 45.0)
        if not self.reported:
            self.reported = True
            return [Sample("occupancy", True)]
        return []

    def tick(self, t: float) -> list[Sample]:
        # Someone in the room moves now and then (Poisson, mean 45 s); each move re-arms the PIR.
        out: list[Sample] = []
        if self.room.occupied(t) and t >= self.next_move:
            out = self._move(t)
        elif not self.room.occupied(t):
            self.next_move = math.inf
        if self.reported and not self._occupancy(t):
            self.reported = False
            out.append(Sample("occupancy", False))
        return out


class Contact(Device):
    """A door or window contact: `contact` is `open` or `closed`."""

    profile = "contact"
    battery_powered = True
    actions = ("open", "close")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open = bool(self.params.get("open", False))

    def read(self, t: float) -> list[Sample]:
        return [Sample("contact", "open" if self.open else "closed")]

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        if action not in ("open", "close"):
            return super().act(t, action, duration, value)
        self.open = action == "open"
        return self.read(t)


class Smoke(Device):
    """Smoke and CO alarm: `smoke` true and `co` (ppm) climbing while the room burns."""

    profile = "smoke"
    battery_powered = True
    actions = ("fire", "extinguish")

    def read(self, t: float) -> list[Sample]:
        fire = self.room.fire
        co = 400.0 if fire else max(0.0, 2.0 + _noise(self.rng, 0.5))
        return [Sample("smoke", fire), Sample("co", round(co, 1), "ppm")]

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        if action not in ("fire", "extinguish"):
            return super().act(t, action, duration, value)
        self.room.advance(t)
        self.room.fire = action == "fire"
        return self.read(t)


class Co2(Device):
    """CO2 in ppm: rises while the room is occupied, decays to outdoor level when empty."""

    profile = "co2"

    def read(self, t: float) -> list[Sample]:
        return [Sample("co2", round(self.room.co2 + _noise(self.rng, 5.0)), "ppm")]


class Leak(Device):
    """Water leak sensor: true from a `leak` event until the water stops and the floor dries."""

    profile = "leak"
    battery_powered = True
    actions = ("leak", "dry")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reported = False

    def _wet(self, t: float) -> bool:
        return self.room.leaking or t < self.room.dry_at

    def read(self, t: float) -> list[Sample]:
        self.reported = self._wet(t)
        return [Sample("water_leak", self.reported)]

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        self.room.advance(t)
        if action == "leak":
            if not self.room.water_supply:
                return []  # no water in the pipes, nothing leaks
            self.room.leaking = True
        elif action == "dry":
            self.room.leaking = False
            self.room.dry_at = t
        else:
            return super().act(t, action, duration, value)
        return self.read(t)

    def tick(self, t: float) -> list[Sample]:
        self.room.advance(t)
        if self.reported != self._wet(t):
            return self.read(t)
        return []


class Switched(Device):
    """An actuator with `state` ON/OFF that obeys `ON`, `OFF` and `TOGGLE` commands."""

    commandable = True
    actions = ("on", "off")
    words: ClassVar[dict[str, str]] = {"ON": "ON", "OFF": "OFF"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on = bool(self.params.get("on", False))

    def apply(self, on: bool) -> None:
        self.on = on

    def read(self, t: float) -> list[Sample]:
        return [Sample("state", "ON" if self.on else "OFF")]

    def command(self, t: float, payload: str) -> list[Sample]:
        word = payload.strip().strip('"').upper()
        if word == "TOGGLE":
            on = not self.on
        elif word in self.words:
            on = self.words[word] == "ON"
        else:
            return []
        self.room.advance(t)
        self.apply(on)
        return self.read(t)

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        if action not in ("on", "off"):
            return super().act(t, action, duration, value)
        return self.command(t, action)


class Light(Switched):
    """A lamp; when on it adds light to the room (an illuminance sensor sees it)."""

    profile = "light"

    def apply(self, on: bool) -> None:
        self.on = self.room.light_on = on


class Valve(Switched):
    """A water valve: `OFF` (or `CLOSE`) shuts the room's water, which stops a leak."""

    profile = "valve"
    words: ClassVar[dict[str, str]] = {"ON": "ON", "OFF": "OFF", "OPEN": "ON", "CLOSE": "OFF"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on = bool(self.params.get("on", True))
        self.room.water_supply = self.on

    def apply(self, on: bool) -> None:
        self.on = self.room.water_supply = on


class Plug(Switched):
    """A smart plug: `state`, `power` (W) of what is plugged in and cumulative `energy` (kWh)."""

    profile = "plug"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on = bool(self.params.get("on", True))
        self.load = float(self.params.get("load", 120.0))
        self.energy = float(self.params.get("energy", self.rng.uniform(0, 50)))
        self.energy_t: float | None = None

    def power(self, t: float) -> float:
        if not self.on:
            return 0.0
        # A compressor-like duty cycle: 20 minutes on, 10 off, with a little noise.
        duty = (t % 1800.0) < 1200.0
        return max(
            0.0, (self.load if duty else self.load * 0.05) + _noise(self.rng, self.load * 0.02)
        )

    def read(self, t: float) -> list[Sample]:
        power = self.power(t)
        if self.energy_t is not None:
            self.energy += power * (t - self.energy_t) / 3_600_000.0
        self.energy_t = t
        return [
            Sample("state", "ON" if self.on else "OFF"),
            Sample("power", round(power, 1), "W"),
            Sample("energy", round(self.energy, 4), "kWh"),
            Sample("voltage", round(230.0 + _noise(self.rng, 1.0), 1), "V"),
        ]


class Meter(Device):
    """A whole-house or line energy meter: `power` (W) following a daily load curve and `energy`."""

    profile = "meter"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base = float(self.params.get("base", 300.0))
        self.energy = float(self.params.get("energy", self.rng.uniform(1000, 5000)))
        self.energy_t: float | None = None

    def read(self, t: float) -> list[Sample]:
        hour = _day_fraction(t) * 24
        evening = math.exp(-((hour - 19.5) ** 2) / 4.0)
        morning = math.exp(-((hour - 7.5) ** 2) / 2.0)
        power = self.base * (1 + 3 * evening + 1.5 * morning) * (1 + _noise(self.rng, 0.05))
        if self.room.fire:
            power *= 1.5
        if self.energy_t is not None:
            self.energy += power * (t - self.energy_t) / 3_600_000.0
        self.energy_t = t
        return [
            Sample("power", round(power, 1), "W"),
            Sample("energy", round(self.energy, 3), "kWh"),
        ]


class Freezer(Device):
    """A freezer near -18 °C with a compressor cycle; it warms while its door is left open."""

    profile = "freezer"
    actions = ("door_open", "door_close")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = float(self.params.get("target", -18.0))
        self.warm_rate = float(self.params.get("warm_rate", 0.02))  # °C per second, door open
        self.cool_rate = float(self.params.get("cool_rate", 0.005))  # °C per second, door shut
        self.temperature = self.target
        self.door_open = False
        self.t: float | None = None

    def _advance(self, t: float) -> None:
        if self.t is not None:
            dt = t - self.t
            if self.door_open:
                self.temperature = min(
                    self.room.temperature, self.temperature + self.warm_rate * dt
                )
            else:
                self.temperature = max(self.target, self.temperature - self.cool_rate * dt)
        self.t = t

    def read(self, t: float) -> list[Sample]:
        self._advance(t)
        cycle = 0.8 * math.sin(2 * math.pi * t / 2400.0)  # the compressor's 40-minute cycle
        value = self.temperature + (cycle if not self.door_open else 0.0) + _noise(self.rng, 0.05)
        return [
            Sample("temperature", round(value, 2), "°C"),
            Sample("door", "open" if self.door_open else "closed"),
        ]

    def act(self, t: float, action: str, duration: float | None, value: Any) -> list[Sample]:
        if action not in ("door_open", "door_close"):
            return super().act(t, action, duration, value)
        self.room.advance(t)
        self._advance(t)
        self.door_open = action == "door_open"
        return self.read(t)


PROFILES: dict[str, type[Device]] = {
    cls.profile: cls
    for cls in (
        Climate,
        Thermostat,
        Illuminance,
        Motion,
        Contact,
        Smoke,
        Co2,
        Leak,
        Light,
        Valve,
        Plug,
        Meter,
        Freezer,
    )
}
