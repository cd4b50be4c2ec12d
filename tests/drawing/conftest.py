"""Fixtures of the drawing's chat tests: a conversation with one drawing in it."""

from __future__ import annotations

import pytest

from tests.drawing.chats import FIRST
from tests.helpers import answer_text, images_in


@pytest.fixture
def chat(serve, fake):
    """The service, a first drawing made through it, and the conversation so far."""
    service = serve()
    answer = answer_text(service.url, FIRST, stream=False)
    assert len(images_in(answer)) == 2
    return service, [{"role": "user", "content": FIRST}, {"role": "assistant", "content": answer}]
