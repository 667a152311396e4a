"""The chat generator for narration: Haystack's ``OpenAIChatGenerator`` on an OpenAI-compatible server.

vLLM in production, llama.cpp's server in tests. The key is a secret read from
the environment by Haystack's ``Secret`` (``OPSLOOP_LLM_API_KEY``, else
``OPENAI_API_KEY``); servers that need no key get a placeholder, because the
OpenAI client refuses an empty one.
"""

from __future__ import annotations

from haystack.components.generators.chat import OpenAIChatGenerator
from haystack.utils import Secret

from opsloop.config.settings import Settings

KEY_ENV = ["OPSLOOP_LLM_API_KEY", "OPENAI_API_KEY"]


def chat_generator(settings: Settings) -> OpenAIChatGenerator:
    if not settings.llm_url:
        raise ValueError("no LLM endpoint: set OPSLOOP_LLM_URL (e.g. http://127.0.0.1:8000/v1)")
    key = Secret.from_env_var(KEY_ENV, strict=False)
    if not key.resolve_value():  # unset or empty
        key = Secret.from_token("no-key")
    return OpenAIChatGenerator(api_key=key, model=settings.llm_model or "default", api_base_url=settings.llm_url,
                               generation_kwargs={"temperature": 0.0, "max_tokens": settings.llm_max_tokens},
                               timeout=settings.llm_timeout_s, max_retries=0)
