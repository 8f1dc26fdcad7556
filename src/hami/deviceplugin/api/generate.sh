#!/bin/sh
# Regenerate api_pb2.py, api_pb2.pyi and api_pb2_grpc.py from api.proto.
# Needs grpcio-tools (the `test` extra). Run from anywhere:
#   sh src/hami/deviceplugin/api/generate.sh
# To refresh api.proto itself:
#   go mod download -json k8s.io/kubelet@<version>
# and copy pkg/apis/deviceplugin/v1beta1/api.proto from the printed Dir,
# keeping the header above `syntax`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
"${PYTHON:-python}" -m grpc_tools.protoc -I "$src" \
  --python_out="$src" --pyi_out="$src" --grpc_python_out="$src" \
  "$src/hami/deviceplugin/api/api.proto"
