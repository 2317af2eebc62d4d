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
