//! Compiles the trimmed copies of etcd's `rpc.proto` and `kv.proto` with protox (no system
//! protoc), as `proto/build.rs` does for snapgate.v1.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["etcdserverpb/rpc.proto", "mvccpb/kv.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // Channels are built by `Client` (one per endpoint, TLS and timeouts set there).
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
