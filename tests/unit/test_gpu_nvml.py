"""The NVML wrapper over a fake ``pynvml``: readings, events, what a GPU lacks."""

from __future__ import annotations

from supervisor.gpu.decisions import GpuEvent, GpuProcess
from supervisor.gpu.nvml import Nvml
from tests.support.fake_nvml import FakeNvml


def opened(fake: FakeNvml) -> Nvml:
    nvml = Nvml.open(fake)
    assert nvml is not None
    return nvml


def test_a_reading_has_processes_ecc_and_remapped_rows() -> None:
    fake = FakeNvml(gpus=2)
    fake.put(1, 42, 1000)
    fake.gpus[1].ecc_uncorrected = 3
    fake.gpus[1].remapped = (2, 1, 1, 0)
    nvml = opened(fake)
    assert [d.uuid for d in nvml.devices] == ["GPU-fake-0", "GPU-fake-1"]
    zero, one = nvml.sample()
    assert zero.processes == ()
    assert one.processes == (GpuProcess(42, 1000),)
    assert (one.ecc_uncorrected, one.ecc_corrected) == (3, 0)
    assert (one.retired_pages, one.retirement_pending) == (3, True)
    assert not one.lost
    nvml.close()
    assert fake.shut_down


def test_what_a_gpu_does_not_support_reads_as_unknown() -> None:
    fake = FakeNvml(gpus=1)
    fake.gpus[0].ecc_uncorrected = None  # ECC off
    fake.gpus[0].ecc_corrected = None
    fake.gpus[0].remapped = None  # and no retired-pages call in this fake either
    [dev] = opened(fake).sample()
    assert (dev.ecc_uncorrected, dev.ecc_corrected) == (None, None)
    assert (dev.retired_pages, dev.retirement_pending) == (None, None)


def test_a_lost_gpu_reads_as_lost() -> None:
    fake = FakeNvml(gpus=1)
    nvml = opened(fake)
    fake.gpus[0].lost = True
    [dev] = nvml.sample()
    assert dev.lost


def test_events_xid_double_bit_and_timeout() -> None:
    fake = FakeNvml(gpus=2)
    fake.gpus[0].events = False  # this GPU gives no events: the other still does
    nvml = opened(fake)
    assert nvml.wait_event(1) is None  # not registered yet
    assert nvml.watch_events() == [1]
    assert nvml.wait_event(1) is None  # timeout
    fake.xid(1, 79)
    fake.double_bit_ecc(1)
    assert nvml.wait_event(100) == GpuEvent(1, "GPU-fake-1", "xid", 79)
    assert nvml.wait_event(100) == GpuEvent(1, "GPU-fake-1", "double_bit_ecc")
    nvml.close()
    nvml.close()  # once is enough


def test_gpu_health_adds_the_watchers_fields_to_a_sources_snapshots() -> None:
    from supervisor.gpu.decisions import RunnerGpu
    from supervisor.gpu.watcher import GpuHealth, GpuWatcher
    from supervisor.ops.observe import RunnerHealth

    base = [
        RunnerHealth("a", "ready", 1, 0, 10, 0.1, 1000, 0, 0),
        RunnerHealth("b", "ready", 1, 0, 11, 0.1, 1000, 0, 0),
    ]

    observers: list[object] = []

    class Source:
        min_ready = 1

        def health_snapshots(self) -> list[RunnerHealth]:
            return base

        def add_observer(self, observer: object) -> None:
            observers.append(observer)

    watcher = GpuWatcher(opened(FakeNvml(gpus=1)), dict)
    watcher.placement = {"a": RunnerGpu(5, {10: 5}, ("GPU-fake-0",), 1, 0, 2, True)}
    health = GpuHealth(Source(), watcher)
    a, b = health.health_snapshots()
    assert (a.gpu_memory, a.gpus, a.gpu_ecc_uncorrected) == (5, ("GPU-fake-0",), 1)
    assert (a.gpu_retired_pages, a.gpu_retirement_pending) == (2, True)
    assert b == base[1]  # on no GPU: untouched
    assert health.min_ready == 1
    health.add_observer("metrics")  # type: ignore[arg-type]
    assert observers == ["metrics"]
