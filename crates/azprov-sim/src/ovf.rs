//! `ovf-env.xml` as the platform writes it onto the provisioning DVD (platform.md §3.5).

use base64::Engine as _;

use crate::vm::VmDefinition;

/// Escapes text for XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// The `ovf-env.xml` for `vm`, in the shape of a real document: `ns0`/`ns1` prefixes, a default-namespace
/// `LinuxProvisioningConfigurationSet`, `xsi:nil` elements and a `PlatformSettingsSection`.
pub fn ovf_env_xml(vm: &VmDefinition) -> String {
    let e = xml_escape;
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    x.push_str("<ns0:Environment xmlns:ns0=\"http://schemas.dmtf.org/ovf/environment/1\"\n");
    x.push_str("                 xmlns:ns1=\"http://schemas.microsoft.com/windowsazure\"\n");
    x.push_str("                 xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n");
    x.push_str("  <ns1:ProvisioningSection><ns1:Version>1.0</ns1:Version>\n");
    x.push_str("    <LinuxProvisioningConfigurationSet xmlns=\"http://schemas.microsoft.com/windowsazure\"\n");
    x.push_str("                                       xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">\n");
    x.push_str("      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>\n");
    x.push_str(&format!("      <HostName>{}</HostName>\n", e(&vm.hostname)));
    x.push_str(&format!("      <UserName>{}</UserName>\n", e(&vm.username)));
    if let Some(password) = &vm.password {
        x.push_str(&format!("      <UserPassword>{}</UserPassword>\n", e(password)));
    }
    x.push_str(&format!(
        "      <DisableSshPasswordAuthentication>{}</DisableSshPasswordAuthentication>\n",
        vm.disable_password_authentication
    ));
    x.push_str("      <SSH>\n        <PublicKeys>\n");
    let key_path = format!("/home/{}/.ssh/authorized_keys", vm.username);
    for key in &vm.ssh_keys {
        x.push_str("          <PublicKey>\n");
        x.push_str(&format!("            <Path>{}</Path>\n", e(&key_path)));
        x.push_str(&format!("            <Value>{}</Value>\n", e(key)));
        x.push_str("          </PublicKey>\n");
    }
    // Certificates from `comp=certificates`, named by thumbprint (invalid PEMs are skipped: `validate` reports them).
    for cert in vm.certificates.iter().filter(|c| c.ovf_public_key) {
        let Ok(fp) = cert.thumbprint() else { continue };
        let path = cert.ovf_path.clone().unwrap_or_else(|| key_path.clone());
        x.push_str("          <PublicKey>\n");
        x.push_str(&format!("            <Fingerprint>{fp}</Fingerprint>\n"));
        x.push_str(&format!("            <Path>{}</Path>\n", e(&path)));
        x.push_str("            <Value></Value>\n");
        x.push_str("          </PublicKey>\n");
    }
    x.push_str("        </PublicKeys>\n");
    let pairs: Vec<_> = vm.certificates.iter().filter(|c| c.ovf_key_pair).collect();
    if !pairs.is_empty() {
        x.push_str("        <KeyPairs>\n");
        for cert in pairs {
            let Ok(fp) = cert.thumbprint() else { continue };
            let path = cert.ovf_path.clone().unwrap_or_else(|| format!("/home/{}/.ssh/id_rsa", vm.username));
            x.push_str("          <KeyPair>\n");
            x.push_str(&format!("            <Fingerprint>{fp}</Fingerprint>\n"));
            x.push_str(&format!("            <Path>{}</Path>\n", e(&path)));
            x.push_str("          </KeyPair>\n");
        }
        x.push_str("        </KeyPairs>\n");
    }
    x.push_str("      </SSH>\n");
    if let Some(custom_data) = &vm.custom_data {
        let b64 = base64::engine::general_purpose::STANDARD.encode(custom_data.as_bytes());
        x.push_str(&format!("      <CustomData>{b64}</CustomData>\n"));
    }
    x.push_str("    </LinuxProvisioningConfigurationSet>\n");
    x.push_str("  </ns1:ProvisioningSection>\n");
    x.push_str("  <ns1:PlatformSettingsSection><ns1:Version>1.0</ns1:Version>\n");
    x.push_str("    <ns1:PlatformSettings>\n");
    x.push_str("      <ns1:KmsServerHostname>kms.core.windows.net</ns1:KmsServerHostname>\n");
    x.push_str(&format!("      <ns1:ProvisionGuestAgent>{}</ns1:ProvisionGuestAgent>\n", vm.provision_guest_agent));
    x.push_str("      <ns1:GuestAgentPackageName xsi:nil=\"true\"/>\n");
    x.push_str("      <ns1:RetainWindowsPEPassInUnattend>true</ns1:RetainWindowsPEPassInUnattend>\n");
    x.push_str("      <ns1:RetainOfflineServicingPassInUnattend>true</ns1:RetainOfflineServicingPassInUnattend>\n");
    let pps = !vm.pps_type.is_empty() && vm.pps_type != "None";
    x.push_str(&format!("      <ns1:PreprovisionedVm>{pps}</ns1:PreprovisionedVm>\n"));
    if pps {
        x.push_str(&format!("      <ns1:PreprovisionedVMType>{}</ns1:PreprovisionedVMType>\n", e(&vm.pps_type)));
    } else {
        x.push_str("      <ns1:PreprovisionedVMType xsi:nil=\"true\"/>\n");
    }
    x.push_str("      <ns1:ProvisionGuestProxyAgent>false</ns1:ProvisionGuestProxyAgent>\n");
    x.push_str("    </ns1:PlatformSettings>\n");
    x.push_str("  </ns1:PlatformSettingsSection>\n");
    x.push_str("</ns0:Environment>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_vm_document() {
        let xml = ovf_env_xml(&VmDefinition::default());
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ns0:Environment"));
        assert!(xml.contains("<HostName>azprov-demo</HostName>"));
        assert!(xml.contains("<UserPassword>Azprov-Demo-Passw0rd!</UserPassword>"));
        assert!(xml.contains("<Path>/home/azureuser/.ssh/authorized_keys</Path>"));
        assert!(xml.contains("<Value>ssh-ed25519 AAAA"));
        // "#!/bin/sh\necho hello\n"
        assert!(xml.contains("<CustomData>IyEvYmluL3NoCmVjaG8gaGVsbG8K</CustomData>"));
        assert!(xml.contains("<ns1:ProvisionGuestAgent>true</ns1:ProvisionGuestAgent>"));
        assert!(xml.contains("<ns1:PreprovisionedVMType xsi:nil=\"true\"/>"));
        assert!(xml.trim_end().ends_with("</ns0:Environment>"));
    }

    #[test]
    fn values_are_escaped_and_optional_elements_omitted() {
        let vm = VmDefinition {
            hostname: "a<b>&c".into(),
            password: None,
            custom_data: Some("x < y && \"z\"\n".into()),
            ssh_keys: vec!["ssh-ed25519 AAAA a&b <c>".into()],
            pps_type: "Savable".into(),
            ..Default::default()
        };
        let xml = ovf_env_xml(&vm);
        assert!(xml.contains("<HostName>a&lt;b&gt;&amp;c</HostName>"), "{xml}");
        assert!(xml.contains("<Value>ssh-ed25519 AAAA a&amp;b &lt;c&gt;</Value>"));
        assert!(!xml.contains("UserPassword"));
        let b64 = base64::engine::general_purpose::STANDARD.encode("x < y && \"z\"\n");
        assert!(xml.contains(&format!("<CustomData>{b64}</CustomData>")));
        assert!(xml.contains("<ns1:PreprovisionedVm>true</ns1:PreprovisionedVm>"));
        assert!(xml.contains("<ns1:PreprovisionedVMType>Savable</ns1:PreprovisionedVMType>"));

        let none = ovf_env_xml(&VmDefinition { custom_data: None, ..Default::default() });
        assert!(!none.contains("CustomData"));
    }

    #[test]
    fn password_is_escaped_but_not_trimmed() {
        let vm = VmDefinition { password: Some(" p&ss'\"word ".into()), ..Default::default() };
        let xml = ovf_env_xml(&vm);
        assert!(xml.contains("<UserPassword> p&amp;ss&apos;&quot;word </UserPassword>"));
    }

    #[test]
    fn certificates_are_listed_by_fingerprint() {
        use crate::certs::SimCert;
        let pair = SimCert::generate_rsa("pair").unwrap();
        let public = SimCert { ovf_path: Some("/home/azureuser/.ssh/other_keys".into()), ..pair.clone().public_key() };
        let hidden = SimCert { ovf_public_key: false, ..public.clone() };
        let vm = VmDefinition { certificates: vec![pair.clone().key_pair(), public, hidden], ..Default::default() };
        let xml = ovf_env_xml(&vm);
        let fp = pair.thumbprint().unwrap();
        assert_eq!(fp.len(), 40);
        let want_public = format!(
            "<PublicKey>\n            <Fingerprint>{fp}</Fingerprint>\n            \
             <Path>/home/azureuser/.ssh/other_keys</Path>\n            <Value></Value>\n          </PublicKey>"
        );
        assert!(xml.contains(&want_public), "{xml}");
        let want_pair = format!(
            "<KeyPairs>\n          <KeyPair>\n            <Fingerprint>{fp}</Fingerprint>\n            \
             <Path>/home/azureuser/.ssh/id_rsa</Path>\n          </KeyPair>\n        </KeyPairs>\n      </SSH>"
        );
        assert!(xml.contains(&want_pair), "{xml}");
        assert_eq!(xml.matches("<Fingerprint>").count(), 2, "{xml}");
        assert!(!ovf_env_xml(&VmDefinition::default()).contains("KeyPairs"));
    }
}
