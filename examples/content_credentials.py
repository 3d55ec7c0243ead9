"""Generate an image with C2PA Content Credentials beside its trustgain record, then check both.

Run: python examples/content_credentials.py MODEL_ID_OR_PATH "a prompt" out.png [--force]
     python examples/content_credentials.py trustgain-mini-sd "a red handwritten seven" seven.png

Any C2PA reader (for example Adobe's Content Credentials inspector, or c2patool) then shows
the image as made by a generative model. Here the certificate comes from a one-shot local CA,
so readers call it valid but not trusted; `trustgain c2pa cert --csr` makes the request to
send to a CA on the C2PA trust list.
"""

import argparse
import sys

import trustgain
from trustgain.errors import TrustgainError
from trustgain.generators.loading import load_pipeline
from trustgain.provenance import credentials


def main(model: str, prompt: str, output: str, force: bool = False) -> None:
    pipe = load_pipeline(model, "cpu")  # DiffusionPipeline.from_pretrained, one-line errors
    keyring = trustgain.KeyRing.generate()  # a throwaway key: use KeyRing.load() for yours
    certs = credentials.issue_certificate(keyring, common_name="Example image service")
    trusted = trustgain.wrap(pipe, ["prompt.normalize", "audit.outputs"], keyring=keyring)
    artifact = trusted(prompt, num_inference_steps=25, seed=0)
    artifact.save(output, overwrite=force,
                  credentials=credentials.ContentCredentials(keyring, certs.chain,
                                                             training="notAllowed"))
    with open(output, "rb") as fh:
        check = credentials.verify_credentials(fh.read(), trusted=[keyring.public_key],
                                               trust_anchors=certs.anchor)
    found = check.credentials
    print(f"{output}: C2PA {found.state} ({', '.join(found.actions)}; training "
          f"{found.training.get('cawg.ai_training')}), record {check.verified.record['record_id']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="diffusers model id or folder, or trustgain-mini-sd")
    parser.add_argument("prompt")
    parser.add_argument("output", help="a .png or .jpg file")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args()
    try:
        main(args.model, args.prompt, args.output, args.force)
    except TrustgainError as exc:
        sys.exit(f"error: {exc}")
