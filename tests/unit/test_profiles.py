from pathlib import Path

import pytest

from fedmq.errors import ConfigError
from fedmq.tinyml_profiles import catalogue, get_profile, parse_fleet
from fedmq.tinyml_profiles import mqtt_sizes as mq

pytestmark = pytest.mark.unit


def test_catalogue_has_ten_sourced_profiles() -> None:
    profiles = catalogue()
    assert len(profiles) >= 10
    for p in profiles.values():
        assert p.sources.get("link") and p.sources.get("device"), p.name
        assert p.link.up_bps > 0 and p.link.down_bps > 0 and p.ram_bytes > 0 and p.flops > 0
    assert profiles["nbiot-modem"].link.up_bps == 264  # the measured figure, not the peak
    assert profiles["pi4-ethernet"].link.up_bps == 940_000_000


def test_fleet_syntax_and_custom_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text(
        'name = "lab-board"\n[device]\nram_bytes = 1048576\nflops = 5e7\n'
        "[link]\nup_bps = 64000\ndown_bps = 128000\nrtt_ms = 20\n"
    )
    fleet = parse_fleet(f"esp32s3-wifi:2, {mine}:3,pi4-ethernet")
    assert [p.name for p in fleet] == ["esp32s3-wifi"] * 2 + ["lab-board"] * 3 + ["pi4-ethernet"]
    assert fleet[2].link.down_bps == 128000 and fleet[2].link.max_payload == 131072
    yaml_file = tmp_path / "y.yaml"
    yaml_file.write_text(
        "name: y\ndevice: {ram_bytes: 1000000, flops: 1.0e+8}\n"
        "link: {up_bps: 1000, down_bps: 1000}\n"
    )
    assert get_profile(str(yaml_file)).name == "y"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nosuch:3", "unknown profile"),
        ("esp32s3-wifi:x", "PROFILE:COUNT"),
        ("esp32s3-wifi:0", ">= 1"),
        ("", "empty fleet"),
    ],
)
def test_bad_fleets(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_fleet(text)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("name = 'a'\n[device]\nram_bytes = 1\nflops = 1\n", "missing 'link'"),
        ("name = 'a'\n[device]\nram_bytes = 1\nflops = 1\n[link]\nup_bps = 1\n", "down_bps"),
        (
            "name = 'a'\n[device]\nram_bytes = 1\nflops = 1\n[link]\nup_bps = -1\ndown_bps = 1\n",
            ">= 0",
        ),
        (
            "name = 'a'\n[device]\nram_bytes = 1\nflops = 1\n[link]\nup_bps = 1\ndown_bps = 1\n"
            "mtu = 3\n",
            "unknown",
        ),
        ("name = [", "profile file"),
    ],
)
def test_bad_profile_files(tmp_path: Path, body: str, match: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=match):
        get_profile(str(f))


def test_mqtt_packet_sizes_by_hand() -> None:
    assert mq.varint_len(127) == 1 and mq.varint_len(128) == 2 and mq.varint_len(16384) == 3
    # PUBLISH QoS 1, topic "a/b", 10 B payload: 1 + 1 + (2 + 3) + 2 + 10
    assert mq.publish_size("a/b", 10) == 19
    assert mq.publish_size("a/b", 200) == 1 + 2 + 5 + 2 + 200
    # CONNECT, client "c", no will: 1 + 1 + 10 + 2 + 1
    assert mq.connect_size("c") == 15
    assert mq.subscribe_size("t") == 1 + 1 + 2 + 2 + 1 + 1
