"""gcp-storage-emulator, with the one header of the real GCS API that orbax
needs and the emulator leaves out.

GCS answers an object download with `x-goog-generation`. Tensorstore (which
orbax writes arrays with) reads it to make its next write of the same object
conditional; without it, the generation reads as 0 and the second save of a
checkpoint fails with "Malformed StorageGeneration". This launcher adds the
header and starts the emulator:

  python -m tests.gcs_emulator --port=9023 --bucket=cnnflax-test
"""
import argparse

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"],
                               request.params["object_id"])
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]
  except Exception:  # pylint: disable=broad-except  (404: the handler says)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server's routing table is built


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True)
  args = parser.parse_args()
  from gcp_storage_emulator.server import create_server
  create_server(args.host, args.port, in_memory=True,
                default_bucket=args.bucket).run()


if __name__ == "__main__":
  main()
