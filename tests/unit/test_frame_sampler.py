import pytest

from services.ingest.sampler import FrameSampler


def kept_times(sampler: FrameSampler, fps_in: float, seconds: float) -> list[float]:
    frames = int(fps_in * seconds)
    return [i / fps_in for i in range(frames) if sampler.keep(i / fps_in)]


@pytest.mark.parametrize("fps_in, fps_out", [(25, 5), (10, 5), (10, 3), (30, 7), (10, 10)])
def test_produced_rate_converges_on_the_target(fps_in, fps_out):
    kept = kept_times(FrameSampler(fps_out), fps_in, seconds=20)
    assert abs(len(kept) / 20 - fps_out) <= 0.1 * fps_out


def test_a_slower_stream_than_the_target_keeps_every_frame():
    assert len(kept_times(FrameSampler(10), fps_in=4, seconds=10)) == 40


def test_after_a_gap_the_grid_restarts_instead_of_bursting():
    sampler = FrameSampler(5)
    assert sampler.keep(0.0)
    assert sampler.keep(10.0)  # 10 s without frames (a reconnect)
    assert not sampler.keep(10.04)
    assert sampler.keep(10.2)


def test_a_non_positive_target_is_refused():
    with pytest.raises(ValueError):
        FrameSampler(0)
