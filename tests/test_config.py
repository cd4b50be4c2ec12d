"""Settings from the environment and from .env, and start-up refusing bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config import Settings
from core.errors import ConfigError
from tests.conftest import ROOT


def test_defaults_are_the_documented_ones():
    settings = Settings.from_env({})
    assert settings.port == 7860
    assert settings.max_images_per_request == 4
    assert settings.image_prompt_model == "Qwen/Qwen2.5-7B-Instruct"
    assert settings.api_base_url == "https://api.siliconflow.cn"
    assert settings.banned_keywords == ("porn", "nude", "naked", "sex", "xxx", "adult")
    assert settings.api_key is None and settings.api_keys == ()
    assert settings.prompt_expansion and not settings.use_lsky_pro and not settings.use_shortlink
    assert settings.models is None  # SiliconFlow's own list, asked at run time


def test_lists_and_flags_are_read():
    settings = Settings.from_env(
        {
            "API_KEYS": " sk-a , sk-b,,sk-c ",
            "USE_LSKY_PRO": "TRUE",
            "PROMPT_EXPANSION": "off",
            "LSKY_PRO_URL": "https://img.example.com/",
            "LSKY_PRO_TOKEN": "1|token",
            "LSKY_STRATEGY_ID": "2",
            "BANNED_KEYWORDS": "Gore, 血腥",
            "API_BASE_URL": "http://127.0.0.1:9000/",
            "MODELS": "a/b",
        }
    )
    assert settings.api_keys == ("sk-a", "sk-b", "sk-c")
    assert settings.use_lsky_pro and not settings.prompt_expansion
    assert (settings.lsky_pro_url, settings.lsky_strategy_id) == ("https://img.example.com", 2)
    assert settings.banned_keywords == ("gore", "血腥")
    assert settings.api_base_url == "http://127.0.0.1:9000"
    assert settings.models == ("a/b",)


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "MAX_IMAGES_PER_REQUEST": "abc",
                "PORT": "70000",
                "USE_SHORTLINK": "maybe",
                "API_BASE_URL": "api.siliconflow.cn",
                "UPSTREAM_TIMEOUT": "-1",
            }
        )
    message = str(caught.value)
    for name in ("MAX_IMAGES_PER_REQUEST", "PORT", "USE_SHORTLINK", "API_BASE_URL", "UPSTREAM_TIMEOUT"):
        assert name in message


def test_switched_on_features_need_their_settings():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"USE_LSKY_PRO": "true", "USE_SHORTLINK": "true", "SHORTLINK_API_KEY": "short"})
    message = str(caught.value)
    for name in ("LSKY_PRO_URL", "LSKY_PRO_TOKEN", "SHORTLINK_BASE_URL", "SHORTLINK_API_KEY"):
        assert name in message


def test_secrets_stay_out_of_repr():
    settings = Settings.from_env(
        {
            "API_KEY": "svc-very-secret",
            "API_KEYS": "sk-upstream-secret",
            "USE_LSKY_PRO": "true",
            "LSKY_PRO_URL": "https://img.example.com",
            "LSKY_PRO_TOKEN": "1|lsky-secret",
            "USE_SHORTLINK": "true",
            "SHORTLINK_BASE_URL": "https://s.example.com",
            "SHORTLINK_API_KEY": "sink-secret",
        }
    )
    for secret in ("svc-very-secret", "sk-upstream-secret", "1|lsky-secret", "sink-secret"):
        assert secret not in repr(settings)


def _load_app(cwd, dotenv: str) -> subprocess.CompletedProcess:
    (cwd / ".env").write_text(dotenv)
    env = {k: v for k, v in os.environ.items() if k not in {"MAX_IMAGES_PER_REQUEST", "API_KEYS", "API_KEY"}}
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import siliconflow_proxy as m; "
        "s = m.app.extensions['siliconflow'].settings; print(s.max_images_per_request, len(s.api_keys))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_dotenv_in_the_working_directory_is_read(tmp_path):
    result = _load_app(tmp_path, "MAX_IMAGES_PER_REQUEST=2\nAPI_KEYS=sk-one,sk-two,sk-three\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "3"]


def test_malformed_value_stops_start_up_naming_the_variable(tmp_path):
    result = _load_app(tmp_path, "MAX_IMAGES_PER_REQUEST=abc\n")
    assert result.returncode == 2
    assert "MAX_IMAGES_PER_REQUEST" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_model_aliases_stop_the_start_naming_the_variable(tmp_path):
    result = _load_app(tmp_path, "MODEL_ALIASES=gpt-image-1\n")
    assert result.returncode == 2
    assert "MODEL_ALIASES" in result.stderr and "'gpt-image-1' is not name=model" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_keys_take_declared_accounts_and_a_malformed_entry_stops_the_start_without_the_key():
    settings = Settings.from_env({"API_KEYS": "sk-one1111, A/sk-two2222\nA/sk-three333  sk-one1111"})
    assert settings.api_keys == ("sk-one1111", "A/sk-two2222", "A/sk-three333")
    assert settings.upstream_keys == ("sk-one1111", "sk-two2222", "sk-three333")
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"API_KEYS": "sk-fine1111,team/extra/sk-secret999,/sk-noname999"})
    message = str(refused.value)
    assert "API_KEYS: entry 2, 3" in message and "NAME/key" in message
    assert "sk-secret999" not in message and "sk-noname999" not in message
