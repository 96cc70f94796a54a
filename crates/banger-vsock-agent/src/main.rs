fn main() -> anyhow::Result<()> {
    banger_vsock_agent::run()
}
