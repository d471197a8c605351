"""One log format: text with the request id when there is one, or one JSON object per line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from common.ops import logs
from common.settings import ConfigError, load_settings


def _line(log_format: str, rid: str | None = None, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.attach(handler, log_format)
    logger = logging.getLogger("vitrine.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    token = logs.request_id.set(rid)
    try:
        if exc:
            try:
                raise ValueError("broken photo")
            except ValueError:
                logger.exception("embed failed for %s", "sku-1")
        else:
            logger.warning("embed failed for %s", "sku-1")
    finally:
        logs.request_id.reset(token)
        logger.removeHandler(handler)
    return stream.getvalue()


def test_text_lines_name_time_level_logger_and_the_request_when_there_is_one() -> None:
    plain = _line("text")
    assert " WARNING vitrine.test-logs: embed failed for sku-1" in plain and "[" not in plain
    assert " WARNING vitrine.test-logs [r-42]: embed failed for sku-1" in _line("text", "r-42")


def test_json_lines_are_one_object_each() -> None:
    line = json.loads(_line("json", "r-42"))
    assert line["level"] == "WARNING" and line["logger"] == "vitrine.test-logs"
    assert line["message"] == "embed failed for sku-1" and line["request_id"] == "r-42"
    assert line["time"].endswith("+00:00")
    failed = _line("json", exc=True)
    assert failed.count("\n") == 1  # the traceback stays inside the one line
    assert "ValueError: broken photo" in json.loads(failed)["exception"]
    assert "request_id" not in json.loads(failed)


def test_the_format_is_a_setting() -> None:
    assert load_settings(log_format="json").ops.log_format == "json"
    with pytest.raises(ConfigError, match="VITRINE_LOG_FORMAT"):
        load_settings(log_format="xml")
