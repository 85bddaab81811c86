"""Write a ``.proto`` file back from a compiled protobuf module's file descriptor.

Used once to obtain Triton's ``grpc_service.proto`` and ``model_config.proto`` (BSD-3-Clause,
NVIDIA) from the descriptors the ``tritonclient`` wheel ships (the wheel has no ``.proto``
files), so that app/grpc/protos holds the exact wire definitions Triton's clients use:
``python tools/proto_from_descriptor.py tritonclient.grpc.service_pb2 > grpc_service.proto``.
"""

from __future__ import annotations

import importlib
import sys

from google.protobuf import descriptor_pb2

_TYPES = {v: k[len("TYPE_"):].lower() for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}


def _type(f: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if f.type in (f.TYPE_MESSAGE, f.TYPE_ENUM):
        name = f.type_name.lstrip(".")
        return name[len(package) + 1:] if name.startswith(package + ".") else name
    return _TYPES[f.type]


def _message(m: descriptor_pb2.DescriptorProto, package: str, indent: str) -> list[str]:
    out = [f"{indent}message {m.name}", f"{indent}{{"]
    inner = indent + "  "
    maps = {n.name: n for n in m.nested_type if n.options.map_entry}
    for e in m.enum_type:
        out += _enum(e, inner)
    for n in m.nested_type:
        if not n.options.map_entry:
            out += _message(n, package, inner)
    oneofs: dict[int, list[descriptor_pb2.FieldDescriptorProto]] = {}
    for f in m.field:
        if f.HasField("oneof_index") and not f.proto3_optional:
            oneofs.setdefault(f.oneof_index, []).append(f)
    done: set[int] = set()
    for f in m.field:
        if f.HasField("oneof_index") and not f.proto3_optional:
            if f.oneof_index in done:
                continue
            done.add(f.oneof_index)
            out.append(f"{inner}oneof {m.oneof_decl[f.oneof_index].name}")
            out.append(f"{inner}{{")
            out += [f"{inner}  {_type(g, package)} {g.name} = {g.number};" for g in oneofs[f.oneof_index]]
            out.append(f"{inner}}}")
            continue
        entry = maps.get(f.type_name.rsplit(".", 1)[-1]) if f.type == f.TYPE_MESSAGE else None
        if entry is not None and f.label == f.LABEL_REPEATED:
            k, v = entry.field
            out.append(f"{inner}map<{_type(k, package)}, {_type(v, package)}> {f.name} = {f.number};")
            continue
        label = "repeated " if f.label == f.LABEL_REPEATED else "optional " if f.proto3_optional else ""
        out.append(f"{inner}{label}{_type(f, package)} {f.name} = {f.number};")
    out.append(f"{indent}}}")
    return out


def _enum(e: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
    return [f"{indent}enum {e.name}", f"{indent}{{",
            *(f"{indent}  {v.name} = {v.number};" for v in e.value), f"{indent}}}"]


def render(module: str) -> str:
    fd = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(module).DESCRIPTOR.CopyToProto(fd)
    lines = [f'syntax = "{fd.syntax or "proto2"}";', "", f"package {fd.package};", ""]
    lines += [f'import "{d}";' for d in fd.dependency] + ([""] if fd.dependency else [])
    for e in fd.enum_type:
        lines += _enum(e, "") + [""]
    for m in fd.message_type:
        lines += _message(m, fd.package, "") + [""]
    for s in fd.service:
        lines += [f"service {s.name}", "{"]
        for r in s.method:
            cs = "stream " if r.client_streaming else ""
            ss = "stream " if r.server_streaming else ""
            lines.append(f"  rpc {r.name}({cs}{r.input_type.lstrip('.').removeprefix(fd.package + '.')}) "
                         f"returns ({ss}{r.output_type.lstrip('.').removeprefix(fd.package + '.')}) {{}}")
        lines += ["}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1]))
