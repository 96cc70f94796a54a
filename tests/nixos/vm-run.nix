# A real guest boots inside the test VM through both units: QEMU backend
# (TCG: the test VM has no nested KVM), the minimal image preinstalled by
# services.banger.images.
{ pkgs, self, common }:
{
  name = "banger-vm-run";
  nodes.machine = { lib, ... }: {
    imports = [ common.machine ];
    services.banger = {
      images = [ self.packages.${pkgs.system}.debian-bookworm-minimal ];
      settings = {
        vmm = "qemu";
        default_image_name = "debian-bookworm-minimal";
        vm_defaults = { vcpu = 1; memory_mib = 1024; };
      };
    };
    virtualisation.memorySize = lib.mkForce 4096;
  };

  testScript = ''
    machine.wait_for_unit("bangerd.service")
    machine.wait_for_unit("banger-images.service")
    machine.succeed("${common.asUser "alice" "banger image show debian-bookworm-minimal"}")
    out = machine.succeed("${common.asUser "alice" "banger vm run --rm -- true; echo exit=$?"}")
    assert "exit=0" in out, out
    # --rm left nothing behind, and the guest's status comes back.
    machine.fail("${common.asUser "alice" "banger vm run --rm -- false"}")
  '';
}
