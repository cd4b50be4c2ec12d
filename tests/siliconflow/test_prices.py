"""The price table (prices.py): the built-in estimates, MODEL_PRICES over them, and a bad
MODEL_PRICES stopping the start with a message that names it and the bad entry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config import Settings
from core.errors import ConfigError
from siliconflow import prices
from tests.conftest import ROOT


def test_the_built_in_table_is_dated_and_prices_what_siliconflow_lists():
    assert prices.PRICES_AS_OF == "2026-12-07"
    table = prices.Prices()
    assert table.of("Kwai-Kolors/Kolors") == 0 and table.of("black-forest-labs/FLUX.1-schnell") == 0  # free
    assert table.of("Qwen/Qwen-Image") == 0.3 and table.of("black-forest-labs/FLUX.1-Kontext-max") == 0.56
    assert table.of("Wan-AI/Wan2.2-T2V-A14B") == 2.0 and table.of("Wan-AI/Wan2.2-I2V-A14B") == 2.0  # a video
    assert table.of("stabilityai/stable-diffusion-xl-base-1.0") is None  # no price: counted 0, said to be unpriced


def test_model_prices_override_and_add():
    settings = Settings.from_env({"MODEL_PRICES": " Qwen/Qwen-Image = 0.25 , my/model=1.5,Kwai-Kolors/Kolors=0 ,"})
    assert settings.model_prices == (("Qwen/Qwen-Image", 0.25), ("my/model", 1.5), ("Kwai-Kolors/Kolors", 0.0))
    table = prices.Prices(settings.model_prices)
    assert (table.of("Qwen/Qwen-Image"), table.of("my/model"), table.of("Qwen/Qwen-Image-Edit")) == (0.25, 1.5, 0.3)
    assert Settings.from_env({}).model_prices == ()


def test_money_is_counted_in_whole_millionths_and_shown_to_the_fen():
    three = sum(prices.micro(0.3) for _ in range(3))
    assert three == 900_000 and prices.yuan(three) == 0.9  # 0.3 + 0.3 + 0.3 in floats is 0.8999999999999999
    assert prices.yuan(prices.micro(0.14) * 7) == 0.98


@pytest.mark.parametrize(
    "raw, says",
    [
        ("Qwen/Qwen-Image", "'Qwen/Qwen-Image' is not model=price"),
        ("Qwen/Qwen-Image=abc", "'Qwen/Qwen-Image=abc': the price is not a number"),
        ("Qwen/Qwen-Image=-0.1", "'Qwen/Qwen-Image=-0.1': the price must be a number of yuan from 0"),
        ("Qwen/Qwen-Image=nan", "'Qwen/Qwen-Image=nan': the price must be"),
        ("Qwen/Qwen-Image=inf", "'Qwen/Qwen-Image=inf': the price must be"),
        ("Qwen/Qwen-Image=1e9", "'Qwen/Qwen-Image=1e9': the price must be"),
        ("=0.3", "'=0.3' is not model=price"),
        ("my model=0.3", "'my model=0.3' is not model=price"),
        ("a/b=1,a/b=2", "'a/b' is given twice"),
    ],
)
def test_a_bad_entry_is_named_with_the_variable(raw, says):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MODEL_PRICES": f"Kwai-Kolors/Kolors=0,{raw}", "PORT": "0"})
    message = str(caught.value)
    assert "MODEL_PRICES: " in message and says in message, message
    assert "PORT" in message  # every bad variable at once


def test_a_bad_model_prices_stops_the_start_naming_it(tmp_path):
    (tmp_path / ".env").write_text("MODEL_PRICES=Qwen/Qwen-Image=0.3,black-forest-labs/FLUX.2-pro=cheap\n")
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PRICES"}
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import siliconflow_proxy as m; m.app"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "MODEL_PRICES: 'black-forest-labs/FLUX.2-pro=cheap'" in result.stderr and "Traceback" not in result.stderr
