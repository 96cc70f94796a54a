# Removing the module (switching to a configuration without it) leaves no
# units, no install metadata and no runtime directories behind.
{ pkgs, self, common }:
{
  name = "banger-uninstall";
  nodes.machine = { lib, ... }: {
    imports = [ common.machine ];
    specialisation.without-banger.configuration = {
      services.banger.enable = lib.mkForce false;
    };
  };

  testScript = ''
    machine.wait_for_unit("bangerd.service")
    machine.succeed("/run/current-system/specialisation/without-banger/bin/switch-to-configuration test")
    machine.fail("systemctl is-active bangerd.service")
    machine.fail("systemctl is-active bangerd-root.service")
    units = machine.succeed("systemctl list-unit-files --no-legend 'banger*'")
    assert units.strip() == "", units
    machine.fail("test -e /etc/banger/install.toml")
    machine.fail("test -e /etc/systemd/system/bangerd.service")
    machine.fail("grep -rq banger /etc/tmpfiles.d")
  '';
}
