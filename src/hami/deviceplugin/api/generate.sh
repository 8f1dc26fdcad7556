#!/bin/sh
# Regenerate the Python stubs (*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) from api.proto (device
# plugin v1beta1) and podresources.proto (pod resources v1). Needs grpcio-tools (the `test`
# extra). Run from anywhere:
#   sh src/hami/deviceplugin/api/generate.sh
# To refresh a proto itself:
#   go mod download -json k8s.io/kubelet@<version>
# and copy pkg/apis/deviceplugin/v1beta1/api.proto or pkg/apis/podresources/v1/api.proto
# from the printed Dir, keeping the header above the first line of kubelet's file.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
for proto in api.proto podresources.proto; do
  "${PYTHON:-python}" -m grpc_tools.protoc -I "$src" \
    --python_out="$src" --pyi_out="$src" --grpc_python_out="$src" \
    "$src/hami/deviceplugin/api/$proto"
done
