"""`ccmsec demo` step for call control (the lead adds it to ccmsec.demo.STEPS, after the phones
have booted): show the registry — who is registered where, in which mode, with which certificate."""

from __future__ import annotations


async def step_registry(ctx) -> None:
    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity
    from ccmsec.domain import ClusterMode, DeviceSecurityMode
    from ccmsec_proto import callmanager_pb2 as pb
    from ccmsec_proto import callmanager_pb2_grpc, common_pb2

    svc = ctx.endpoints["services"]["callmanager"]
    async with secure_channel(client_identity(ctx.data), svc["host"], svc["grpc_port"],
                              "callmanager") as channel:
        stub = callmanager_pb2_grpc.CallManagerStub(channel)
        mode = await stub.GetClusterMode(common_pb2.Empty(), timeout=5)
        regs = (await stub.GetRegistrations(pb.RegistrationsRequest(), timeout=5)).registrations
    ctx.say(f"cluster security mode: {ClusterMode.proto_text(mode.mode)}; "
            f"{len(regs)} device(s) registered")
    for r in regs:
        mode_name = DeviceSecurityMode.proto_text(r.mode)
        cert = f"{r.certificate_kind} {r.certificate_fingerprint[:16]}…" if r.certificate_kind else "-"
        ctx.say(f"{r.device:16} {r.model:6} {mode_name:13} on {r.server}:{r.transport_port} "
                f"from {r.address:21} cert {cert}" + ("  MODE-7: NAT suspected" if r.nat_suspected else ""))
