# The banger package: bin/banger, bin/bangerd, bin/bangerd-root,
# bin/bangerd-build (the image builder the helper runs, from beside its own
# binary), and the guest agent under lib/banger/. The agent runs inside Debian guests, not on
# the host, so it is built statically (musl) and does not reference the Nix
# store's glibc.
{ lib, rustPlatform, pkgsStatic }:
let
  cargoToml = lib.importTOML ../Cargo.toml;
  version = cargoToml.workspace.package.version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../rustfmt.toml
      ../crates
      # Compiled in: the unit hardening (banger-deploy) and the image catalog.
      ../nix/units.json
      (lib.fileset.maybeMissing ../images)
    ];
  };

  common = {
    inherit version src;
    cargoLock.lockFile = ../Cargo.lock;
    # The test suite needs root, network namespaces, QEMU and nix-instantiate;
    # it runs in .ci/run and in this flake's NixOS checks instead.
    doCheck = false;
  };

  agent = pkgsStatic.rustPlatform.buildRustPackage (common // {
    pname = "banger-vsock-agent";
    cargoBuildFlags = [ "-p" "banger-vsock-agent" ];
    meta.description = "banger's guest agent (static)";
  });

  # The root helper on its own: a workspace build would unify its crates'
  # features with bangerd's (banger-image's `pull`, banger-config's
  # `ssh-key`, tokio's `full`), linking code the helper never asks for
  # (docs/ARCHITECTURE.md, "Dependency closures").
  helper = rustPlatform.buildRustPackage (common // {
    pname = "bangerd-root";
    cargoBuildFlags = [ "-p" "bangerd-root" ];
    meta.description = "banger's root helper";
  });
in
rustPlatform.buildRustPackage (common // {
  pname = "banger";
  # bangerd-build is the image builder bangerd-root starts (as its child, or
  # in a transient unit) from beside its own binary; it links banger-image,
  # which the helper does not.
  cargoBuildFlags = [ "-p" "banger-cli" "-p" "bangerd" "-p" "bangerd-build" ];

  postInstall = ''
    mkdir -p $out/lib/banger
    rm -f $out/bin/banger-vsock-agent
    cp ${agent}/bin/banger-vsock-agent $out/lib/banger/banger-vsock-agent
    rm -f $out/bin/bangerd-root
    cp ${helper}/bin/bangerd-root $out/bin/bangerd-root
  '';

  passthru = { inherit agent helper; };

  meta = {
    description = "One-command development sandboxes on Firecracker and QEMU microVMs";
    homepage = cargoToml.workspace.package.repository;
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "banger";
    platforms = [ "x86_64-linux" ];
  };
})
