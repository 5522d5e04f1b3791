"""Pushes and pulls OCI artifacts with the ORAS project's Python client.

oras-py has no artifactType option, so the push adds the field to the
manifest just before the client uploads it; everything else (blob uploads,
the config, the subject, the manifest PUT, the pull) is the client's own.

  push REF ARTIFACT_TYPE|- CONFIG_PATH:MEDIA_TYPE [--subject MEDIA,DIGEST,SIZE]
       FILE_PATH:MEDIA_TYPE...        prints the pushed manifest's digest
  pull REF OUTDIR                     prints the pulled files' paths
"""

import hashlib
import json
import sys

import oras.oci
import oras.provider


class Registry(oras.provider.Registry):
    artifact_type = None

    def upload_manifest(self, manifest, container, *args, **kwargs):
        if self.artifact_type:
            manifest["artifactType"] = self.artifact_type
        self.pushed = json.dumps(manifest).encode()
        return super().upload_manifest(manifest, container, *args, **kwargs)


def main(argv):
    command, ref = argv[0], argv[1]
    registry = Registry(insecure=True, tls_verify=False)
    if command == "push":
        registry.artifact_type = None if argv[2] == "-" else argv[2]
        config, rest = argv[3], argv[4:]
        subject = None
        if rest[:1] == ["--subject"]:
            media_type, digest, size = rest[1].split(",")
            subject = oras.oci.Subject(media_type, digest, int(size))
            rest = rest[2:]
        response = registry.push(
            target=ref,
            files=rest,
            manifest_config=config,
            subject=subject,
            disable_path_validation=True,
            quiet=True,
        )
        digest = response.headers.get("Docker-Content-Digest")
        assert digest == "sha256:" + hashlib.sha256(registry.pushed).hexdigest(), digest
        print(digest)
    elif command == "pull":
        for path in registry.pull(target=ref, outdir=argv[2]):
            print(path)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
