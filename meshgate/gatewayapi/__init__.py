"""Gateway API objects (and meshgate's own kinds) → IR, with a status per object and policy
attachment by `targetRefs`. Pure: no I/O beyond reading the certificate files a Gateway names."""

from meshgate.gatewayapi.translator import Translation, TranslationMemo, translate, translate_view

__all__ = ["Translation", "TranslationMemo", "translate", "translate_view"]
