"""Wrap a diffusers pipeline in trust stages and verify what it made.

Run: python examples/wrap_pipeline.py MODEL_ID_OR_PATH "a prompt" out.png [--force]
     python examples/wrap_pipeline.py trustgain-mini-sd "a handwritten seven" seven.png
"""

import argparse
import sys

import trustgain
from trustgain.errors import TrustgainError
from trustgain.generators.loading import load_pipeline


def main(model: str, prompt: str, output: str, force: bool = False) -> None:
    pipe = load_pipeline(model, "cpu")  # DiffusionPipeline.from_pretrained, one-line errors
    keyring = trustgain.KeyRing.generate()  # a throwaway key: use KeyRing.load() for yours
    trusted = trustgain.wrap(
        pipe,
        ["prompt.normalize", "generate.keyed_latents", "generate.latent_trace", "audit.outputs"],
        keyring=keyring,
    )
    artifact = trusted(prompt, num_inference_steps=25, seed=0)
    artifact.save(output, overwrite=force)
    verified = trustgain.verify_file(output, trusted=[keyring.public_key])
    print(f"{output}: record {verified.record['record_id']} signed by {verified.key_id}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="diffusers model id or folder, or trustgain-mini-sd")
    parser.add_argument("prompt")
    parser.add_argument("output", help="a .png file")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args()
    try:
        main(args.model, args.prompt, args.output, args.force)
    except TrustgainError as exc:
        sys.exit(f"error: {exc}")
