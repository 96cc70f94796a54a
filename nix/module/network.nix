# Guest network: the bridge name and CIDR flow into banger's settings; the
# root helper creates the bridge, taps and its own nftables table at run time.
{ config, lib, ... }:
let
  cfg = config.services.banger;
in
{
  config = lib.mkIf cfg.enable {
    services.banger.settings = {
      bridge_name = lib.mkDefault cfg.network.bridge;
      cidr = lib.mkDefault cfg.network.cidr;
    };

    # NetworkManager would otherwise take over the bridge and the taps
    # (DHCP on them, or tearing them down).
    networking.networkmanager.unmanaged = lib.mkIf config.networking.networkmanager.enable [
      "interface-name:${cfg.network.bridge}"
      "interface-name:banger-t*"
    ];
  };
}
