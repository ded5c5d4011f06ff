"""Config files → validated objects → translation, the path `meshgate validate`, `translate` and
the control plane share.

Stage 1 (per document, `parse_document`): `apiVersion` + `kind` pick a model from `KINDS`;
pydantic checks fields and types. Stage 2 (`meshgate.providers.store`): each object keeps its
last valid version. Stage 3 (`meshgate.gatewayapi`): references between objects, conflicts and
policy attachment, with a status per object. Every problem becomes a `ConfigError` naming the
file, line and field; validation never stops at the first one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from meshgate.providers.file.loader import DocumentCache, SourceDocument, load_documents
from meshgate.api.envoy_proxy import ENVOY_PROXY_KINDS
from meshgate.api.messages import describe_unknown_kind, describe_validation_error
from meshgate.api.models import KINDS as _MODEL_KINDS
from meshgate.api.models import Resource
from meshgate.api.policies import POLICY_KINDS
from meshgate.api.transcoding import TRANSCODING_KINDS
from meshgate.api.service import SERVICE_KINDS
from meshgate.errors import ConfigError, ConfigErrors

if TYPE_CHECKING:
    from meshgate.gatewayapi import Translation

# (apiVersion, kind) -> model, for every kind meshgate reads.
KINDS: dict[tuple[str, str], type[Resource]] = {**_MODEL_KINDS, **POLICY_KINDS, **TRANSCODING_KINDS, **SERVICE_KINDS,
                                                 **ENVOY_PROXY_KINDS}


def load_config(
    paths: Sequence[str], env: str | None = None, environ: Mapping[str, str] | None = None,
    cache: DocumentCache | None = None,
) -> Translation:
    """Load, validate and translate config files. Raises `ConfigErrors` listing every problem.

    With a `cache`, files unchanged since the last call are neither re-read nor re-validated.
    """
    translation, errors = load_translation(paths, env=env, environ=environ, cache=cache)
    if errors:
        raise ConfigErrors(errors)
    return translation


def load_translation(
    paths: Sequence[str], env: str | None = None, environ: Mapping[str, str] | None = None,
    cache: DocumentCache | None = None,
) -> tuple[Translation, list[ConfigError]]:
    """Like `load_config`, but returns the translation of the valid objects with every problem
    (Gateway API partial validity: what is valid is translated, the rest is reported)."""
    from meshgate.gatewayapi import translate_view
    from meshgate.providers.store import ObjectStore

    docs, load_errors = load_documents(paths, env=env, environ=environ, cache=cache)
    view = ObjectStore().update(docs, load_errors)
    translation = translate_view(view)
    errors = all_problems(view, translation)
    if view.documents == 0 and not errors:
        errors = [ConfigError(", ".join(paths), 0, "", "no objects found (an empty config serves nothing)")]
    return translation, errors


def all_problems(view, translation) -> list[ConfigError]:  # noqa: ANN001 - StoreView, Translation
    """Every problem of one load, sorted, each once."""
    return sorted(set(view.problems + translation.status.problems), key=lambda e: (e.file, e.line, e.field, e.message))


def parse_document(doc: SourceDocument) -> tuple[Resource | None, list[ConfigError]]:
    """Validate one document against the schema its apiVersion and kind select (once per document)."""
    if doc.parsed is None:
        doc.parsed = _parse_document(doc)
    return doc.parsed


def _parse_document(doc: SourceDocument) -> tuple[Resource | None, list[ConfigError]]:
    data = doc.data
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return None, [doc.error(("apiVersion",), "required field is missing")]
    if not isinstance(kind, str) or not kind:
        return None, [doc.error(("kind",), "required field is missing")]
    model = KINDS.get((api_version, kind))
    if model is None:
        return None, [doc.error(("kind",), describe_unknown_kind(api_version, kind, KINDS))]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, [doc.error(tuple(e["loc"]), describe_validation_error(e, model, data)) for e in exc.errors()]
