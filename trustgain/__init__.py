"""trustgain: trust stages around AI generation jobs, sealed by a signed provenance record.

Public API::

    import trustgain
    keyring = trustgain.KeyRing.generate()
    pipe = trustgain.wrap(diffusers_pipe, stages=["generate.keyed_latents"], keyring=keyring)
    artifact = pipe("a handwritten seven", seed=0)
    artifact.save("seven.png")
    trustgain.verify_file("seven.png", trusted=[keyring.public_key])

    chat = trustgain.wrap_text(lm, tokenizer, stages=["privacy.redact"], keyring=keyring)
    chat("Describe a lighthouse", seed=0, max_new_tokens=64).save("lighthouse.txt")
"""

__version__ = "0.1.0"

from trustgain.artifact import Artifact
from trustgain.config import PipelineConfig
from trustgain.errors import Reason, TrustgainError, VerificationError
from trustgain.keys import DerivedKey, KeyRing, PublicKey
from trustgain.pipeline import TrustPipeline, wrap, wrap_text
from trustgain.provenance import SignedRecord, Verified, verify_file
from trustgain.stage import Phase, RunContext, Stage, build_stage, known_stages, register_stage
from trustgain.types import GenerationRequest, Item, StageRecord, StageResult, StepHook

__all__ = [
    "Artifact",
    "DerivedKey",
    "GenerationRequest",
    "Item",
    "KeyRing",
    "Phase",
    "PipelineConfig",
    "PublicKey",
    "Reason",
    "RunContext",
    "SignedRecord",
    "Stage",
    "StageRecord",
    "StageResult",
    "StepHook",
    "TrustPipeline",
    "TrustgainError",
    "VerificationError",
    "Verified",
    "__version__",
    "build_stage",
    "known_stages",
    "register_stage",
    "verify_file",
    "wrap",
    "wrap_text",
]
