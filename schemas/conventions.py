"""Which span attributes carry which concept, and how raw vocabularies map to normalized ones.

Every decoder reads *only* the attribute keys listed here (plus the configurable keys of
:class:`AttributeKeys`); everything else on a span, in particular every prompt/completion
content key (``gen_ai.input.messages``, ``gen_ai.prompt.N.content``, ``input.value``, ...), is
skipped by a single dict miss and never materialised.  Keeping the whole vocabulary in one module
is what lets the hot loop be a dict lookup per attribute instead of per-convention branches.

Conventions covered (see ``/work/shared/reference/genai-attributes.md``, §1–§5, §7):

* OTel GenAI current (1.37–1.41 + the genai repo's ``cache_write``) and deprecated names
  (``gen_ai.system``, ``gen_ai.usage.prompt_tokens``/``completion_tokens``).
* Traceloop/OpenLLMetry classic (<= 0.54: ``llm.request.type``,
  ``gen_ai.completion.N.finish_reason``, underscore cache keys, ``gen_ai.system="Anthropic"``)
  and >= 0.55 (OTel-aligned plus non-standard ``gen_ai.usage.reasoning_tokens``/``total_tokens``).
* OpenInference (``openinference.span.kind``, ``llm.model_name`` which is the *response* model (S9),
  ``llm.token_count.*``, scalar ``llm.finish_reason``, ``llm.provider``/``llm.system``; the request
  model comes from ``llm.request.model_name`` or the ``"model"`` key of the
  ``llm.invocation_parameters`` JSON, nothing else).
* The Anthropic SDK's native spans (``anthropic.message.stop_reason``,
  ``gen_ai.usage.cache_write.input_tokens``).

Priority: for each concept the first key of its list that a span carries wins, whatever its
position in the span.  Dimension keys (tenant, feature, ...) are looked up on the span first (all
configured keys, in order) and only then on the resource (same order).

Span-carried cost: ``llm.cost.total`` (OpenInference, USD), then ``gen_ai.usage.cost`` (used by
Langfuse/LiteLLM-style exporters and several in-house SDKs, USD), then ``gen_ai.cost.total_usd``
(seen in in-house cost instrumentations).  A span that carries a cost is charged that cost, never a
recomputed one.

Time to first token: ``gen_ai.response.time_to_first_chunk`` (seconds, OTel 1.41).  OpenInference
has no attribute but records a ``First Token Stream Event`` span event; its time minus the span
start is used.  Traceloop only records TTFT as a metric, so its spans have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Final

#: Legacy Traceloop writes one ``gen_ai.completion.N.*`` group per choice; choices at index >= this
#: are ignored (their finish reason cannot change the class of a call in practice).
MAX_INDEXED_CHOICES: Final = 8


class Kind(IntEnum):
    """How an attribute value is converted; the decoders validate the wire type against it."""

    STR = 0  # any scalar, stringified (tenant ids are sometimes ints)
    INT = 1  # integer; integral doubles and numeric strings accepted
    FLOAT = 2  # number; numeric strings accepted; NaN/inf rejected
    BOOL = 3  # bool, or the strings "true"/"false"
    STR_LIST = 4  # array of scalars (a lone string is taken as a one-element list)
    PRESENCE = 5  # only presence matters; the value is never read (content keys)


class Slot(IntEnum):
    """Index of each extracted concept in the per-span value vector."""

    OPERATION = 0
    REQUEST_TYPE = 1
    OPENINFERENCE_KIND = 2
    PROVIDER = 3
    REQUEST_MODEL = 4
    RESPONSE_MODEL = 5
    INVOCATION_PARAMETERS = 6
    INPUT_TOKENS = 7
    OUTPUT_TOKENS = 8
    TOTAL_TOKENS = 9
    CACHE_READ = 10
    CACHE_WRITE = 11
    REASONING = 12
    FINISH_LIST = 13
    FINISH_SCALAR = 14
    RESPONSE_ID = 15
    ERROR_TYPE = 16
    TTFT = 17
    COST = 18
    LEGACY_REFUSAL = 19
    APP_REFUSAL = 20
    PARSE_OK = 21
    TENANT = 22
    SERVICE = 23
    ENVIRONMENT = 24
    FEATURE = 25
    PROMPT_VERSION = 26
    FINISH_INDEXED = 27  # MAX_INDEXED_CHOICES consecutive slots follow


N_SLOTS: Final = int(Slot.FINISH_INDEXED) + MAX_INDEXED_CHOICES

#: Fixed (non-configurable) concept keys in priority order, with their value kind.
FIXED_KEYS: Final[dict[Slot, tuple[Kind, tuple[str, ...]]]] = {
    Slot.OPERATION: (Kind.STR, ("gen_ai.operation.name",)),
    Slot.REQUEST_TYPE: (Kind.STR, ("llm.request.type",)),
    Slot.OPENINFERENCE_KIND: (Kind.STR, ("openinference.span.kind",)),
    Slot.PROVIDER: (
        Kind.STR,
        ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"),
    ),
    Slot.REQUEST_MODEL: (Kind.STR, ("gen_ai.request.model", "llm.request.model_name")),
    Slot.RESPONSE_MODEL: (
        Kind.STR,
        ("gen_ai.response.model", "llm.response.model_name", "llm.model_name"),
    ),
    Slot.INVOCATION_PARAMETERS: (Kind.STR, ("llm.invocation_parameters",)),
    Slot.INPUT_TOKENS: (
        Kind.INT,
        ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
    ),
    Slot.OUTPUT_TOKENS: (
        Kind.INT,
        (
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ),
    ),
    Slot.TOTAL_TOKENS: (
        Kind.INT,
        ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total"),
    ),
    Slot.CACHE_READ: (
        Kind.INT,
        (
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
            "llm.token_count.prompt_details.cache_read",
        ),
    ),
    Slot.CACHE_WRITE: (
        Kind.INT,
        (
            "gen_ai.usage.cache_write.input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
            "llm.token_count.prompt_details.cache_write",
        ),
    ),
    Slot.REASONING: (
        Kind.INT,
        (
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
            "llm.usage.reasoning_tokens",
            "llm.token_count.completion_details.reasoning",
        ),
    ),
    Slot.FINISH_LIST: (Kind.STR_LIST, ("gen_ai.response.finish_reasons",)),
    Slot.FINISH_SCALAR: (Kind.STR, ("llm.finish_reason", "anthropic.message.stop_reason")),
    Slot.RESPONSE_ID: (Kind.STR, ("gen_ai.response.id",)),
    Slot.ERROR_TYPE: (Kind.PRESENCE, ("error.type",)),
    Slot.TTFT: (Kind.FLOAT, ("gen_ai.response.time_to_first_chunk",)),
    Slot.COST: (Kind.FLOAT, ("llm.cost.total", "gen_ai.usage.cost", "gen_ai.cost.total_usd")),
}

#: OpenInference span event whose timestamp marks the first streamed token.
FIRST_TOKEN_EVENT: Final = "First Token Stream Event"  # noqa: S105 - an event name

#: Resource-attribute ranks start here so that any span attribute outranks any resource one.
RESOURCE_RANK_OFFSET: Final = 100

#: Rank meaning "no value yet".
NO_RANK: Final = 1 << 30


@dataclass(frozen=True)
class AttributeKeys:
    """Configurable attribute keys of the dimensions, each looked up span-first then resource."""

    tenant: tuple[str, ...] = ("tenant.id", "app.tenant_id")
    feature: tuple[str, ...] = ("app.feature",)
    prompt_version: tuple[str, ...] = (
        "app.prompt_version",
        "llm.prompt.version",
        "gen_ai.prompt.version",
    )
    parse_ok: tuple[str, ...] = ("app.output.parse_ok",)
    refusal: tuple[str, ...] = ("app.refusal",)
    environment: tuple[str, ...] = ("deployment.environment.name", "deployment.environment")
    service: tuple[str, ...] = ("service.name",)

    def configurable(self) -> dict[Slot, tuple[Kind, tuple[str, ...]]]:
        """Return the configurable slots with their kinds and key lists."""
        return {
            Slot.TENANT: (Kind.STR, tuple(self.tenant)),
            Slot.SERVICE: (Kind.STR, tuple(self.service)),
            Slot.ENVIRONMENT: (Kind.STR, tuple(self.environment)),
            Slot.FEATURE: (Kind.STR, tuple(self.feature)),
            Slot.PROMPT_VERSION: (Kind.STR, tuple(self.prompt_version)),
            Slot.APP_REFUSAL: (Kind.BOOL, tuple(self.refusal)),
            Slot.PARSE_OK: (Kind.BOOL, tuple(self.parse_ok)),
        }


#: A lookup entry: (slot, rank, kind).  Lower rank wins.
Spec = tuple[int, int, int]


def span_lookup(keys: AttributeKeys) -> dict[str, Spec]:
    """Build the attribute-key -> (slot, rank, kind) table used for span attributes.

    Configurable keys that collide with a fixed key are rejected, because one attribute feeding
    two concepts would make the priority order ambiguous.
    """
    table: dict[str, Spec] = {}
    for slot, (kind, names) in {**FIXED_KEYS, **keys.configurable()}.items():
        for rank, name in enumerate(names):
            _add(table, name, (int(slot), rank, int(kind)))
    for n in range(MAX_INDEXED_CHOICES):
        _add(
            table,
            f"gen_ai.completion.{n}.finish_reason",
            (int(Slot.FINISH_INDEXED) + n, 0, int(Kind.STR)),
        )
        _add(
            table,
            f"gen_ai.completion.{n}.refusal",
            (int(Slot.LEGACY_REFUSAL), 0, int(Kind.PRESENCE)),
        )
    return table


def resource_lookup(keys: AttributeKeys) -> dict[str, Spec]:
    """Build the lookup for resource attributes: only the configurable dimensions, ranked last."""
    table: dict[str, Spec] = {}
    for slot, (kind, names) in keys.configurable().items():
        for rank, name in enumerate(names):
            _add(table, name, (int(slot), RESOURCE_RANK_OFFSET + rank, int(kind)))
    return table


def _add(table: dict[str, Spec], name: str, spec: Spec) -> None:
    if name in table:
        msg = (
            f"attribute key {name!r} is configured for two concepts; give each concept its own key"
        )
        raise ValueError(msg)
    table[name] = spec


# ----------------------------------------------------------------------------------------------
# Operations: what makes a span an LLM call.

#: ``gen_ai.operation.name`` values that are LLM calls, mapped to the normalized operation.
LLM_OPERATIONS: Final[dict[str, str]] = {
    "chat": "chat",
    "text_completion": "text_completion",
    "generate_content": "generate_content",
    "completion": "text_completion",
}

#: Traceloop classic ``llm.request.type`` values that are LLM calls.  Legacy Traceloop Anthropic
#: spans say ``completion`` for Messages calls (S12); the decoders turn that into ``chat``.
REQUEST_TYPE_OPERATIONS: Final[dict[str, str]] = {
    "chat": "chat",
    "completion": "text_completion",
}

#: OpenInference does not say which API was called; an ``LLM`` span is recorded as ``chat``
#: (the overwhelmingly common case; the legacy completions API is the exception).
OPENINFERENCE_LLM_KIND: Final = "LLM"
OPENINFERENCE_OPERATION: Final = "chat"


@lru_cache(maxsize=1024)
def operation_of(op: object, request_type: object, oi_kind: object, provider: object) -> str | None:
    """Return the normalized LLM operation of a span, or None when it is not an LLM call.

    The first concept the span carries decides (an ``embeddings`` operation name is not
    overridden by a Traceloop ``llm.request.type``).
    """
    if op is not None:
        return LLM_OPERATIONS.get(str(op).lower())
    if request_type is not None:
        mapped = REQUEST_TYPE_OPERATIONS.get(str(request_type).lower())
        if mapped == "text_completion" and str(provider).lower() == "anthropic":
            return "chat"
        return mapped
    if oi_kind is not None and str(oi_kind).upper() == OPENINFERENCE_LLM_KIND:
        return OPENINFERENCE_OPERATION
    return None


# ----------------------------------------------------------------------------------------------
# Providers.

#: Lower-cased provider spellings mapped to the OTel ``gen_ai.provider.name`` value.  Values not
#: listed pass through lower-cased (``ollama``, ``fireworks``, ...).
PROVIDER_ALIASES: Final[dict[str, str]] = {
    "az.ai.openai": "azure.ai.openai",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "azure.openai": "azure.ai.openai",
    "az.ai.inference": "azure.ai.inference",
    "azure_ai_inference": "azure.ai.inference",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "google": "gcp.gen_ai",
    "mistralai": "mistral_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "x-ai": "x_ai",
    "aws": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "watsonx": "ibm.watsonx.ai",
    "moonshot": "moonshot_ai",
    "moonshotai": "moonshot_ai",
    "together": "together_ai",
    "huggingface": "hugging_face",
}

#: Canonical provider -> genai-prices provider id.  A provider not listed is not priced from
#: genai-prices (a self-hosted ``ollama`` model must not be charged OpenAI's list price); config
#: overrides still apply.  A span without any provider is priced by model-name matching.
GENAI_PRICES_PROVIDERS: Final[dict[str, str]] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "groq": "groq",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
    "deepseek": "deepseek",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "moonshot_ai": "moonshotai",
    "together_ai": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
}


def canonical_provider(raw: str | None) -> str | None:
    """Normalize one provider spelling (scalar twin of the vectorized expression)."""
    if raw is None:
        return None
    low = raw.strip().lower()
    if not low:
        return None
    return PROVIDER_ALIASES.get(low, low)


# ----------------------------------------------------------------------------------------------
# Finish reasons.

#: Lower-cased raw finish/stop reasons of every vocabulary in §5 mapped to a FINISH_CLASSES member.
#: Anything unlisted is ``other``.  Anthropic's ``refusal`` stop reason is raised by its safety
#: classifiers, so it counts as ``content_filter`` (and as a refusal).
FINISH_CLASS_OF: Final[dict[str, str]] = {
    # stop
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "complete": "stop",
    "completed": "stop",
    # length
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "model_context_window_exceeded": "length",
    # content filter
    "content_filter": "content_filter",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
    "refusal": "content_filter",
    "safety": "content_filter",
    "recitation": "content_filter",
    "blocklist": "content_filter",
    "prohibited_content": "content_filter",
    "spii": "content_filter",
    "image_safety": "content_filter",
    "image_prohibited_content": "content_filter",
    "image_recitation": "content_filter",
    # tool calls
    "tool_calls": "tool_calls",
    "tool_call": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    # error (OTel: a choice whose reason was expected but not received)
    "error": "error",
}

#: Raw reasons that also make a call a refusal.
REFUSAL_REASONS: Final = ("refusal",)
