"""Wrap a diffusers pipeline in trust stages and verify what it made.

Run: python examples/wrap_pipeline.py MODEL_ID_OR_PATH "a prompt" out.png
"""

import sys

from diffusers import DiffusionPipeline

import trustgain


def main(model: str, prompt: str, output: str) -> None:
    pipe = DiffusionPipeline.from_pretrained(model)
    keyring = trustgain.KeyRing.generate()
    trusted = trustgain.wrap(
        pipe,
        ["prompt.normalize", "generate.keyed_latents", "generate.latent_trace", "audit.outputs"],
        keyring=keyring,
    )
    artifact = trusted(prompt, num_inference_steps=25, seed=0)
    artifact.save(output, overwrite=True)
    verified = trustgain.verify_file(output, trusted=[keyring.public_key])
    print(f"{output}: record {verified.record['record_id']} signed by {verified.key_id}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
