//! Object templates: the storage primary key (SRK) and the sealed KEK object.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, KeyedHashScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SymmetricDefinitionObject,
};

/// The standard ECC P-256 storage root key template (TCG EK Credential Profile template
/// L-2 with the SRK overrides of the TCG Provisioning Guidance 7.5.1): restricted decrypt,
/// AES-128-CFB for children, sha256 name algorithm, userWithAuth, noDA, empty authPolicy,
/// unique = 32 zero bytes for x and y.
///
/// Created from the owner seed, it is the same key on every run of the same TPM, and a
/// different key after TPM2_Clear (new owner seed) or on another TPM.
pub fn srk() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let zeros = || EccParameter::try_from(vec![0u8; 32]);
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(zeros()?, zeros()?))
        .build()
}

/// The sealed KEK: a keyedhash data object (scheme NULL) whose only way to be used is the
/// PCR policy.
///
/// - `userWithAuth` clear: the (empty) authValue can never authorise TPM2_Unseal; only a
///   policy session satisfying `policy` can.
/// - `adminWithPolicy` set: admin actions (ObjectChangeAuth, ...) also need the policy,
///   which contains no PolicyCommandCode, so they are impossible.
/// - `fixedTPM`/`fixedParent`: not duplicable, bound to this TPM's storage key.
/// - `sensitiveDataOrigin` clear: the caller supplies the data (the KEK).
pub fn sealed_object(policy: Digest) -> Result<Public, tss_esapi::Error> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(sealed_attributes()?)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

fn sealed_attributes() -> Result<tss_esapi::attributes::ObjectAttributes, tss_esapi::Error> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(false)
        .with_user_with_auth(false)
        .with_admin_with_policy(true)
        .with_no_da(false)
        .build()
}

/// Check that a public area read from a blob is a sealed object as [`sealed_object`] makes
/// it, bound to `policy`. The TPM recomputes `unique` on load; everything else is checked
/// here so a swapped or edited blob is refused with a clear reason.
pub fn check_sealed_public(public: &Public, policy: &Digest) -> Result<(), &'static str> {
    let Public::KeyedHash {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        ..
    } = public
    else {
        return Err("is not a keyedhash (sealed data) object");
    };
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return Err("does not use sha256 as its name algorithm");
    }
    let expected = sealed_attributes().map_err(|_| "cannot build the expected attributes")?;
    if *object_attributes != expected {
        return Err("has object attributes other than the sealed-object template's");
    }
    if *parameters != PublicKeyedHashParameters::new(KeyedHashScheme::Null) {
        return Err("is not a sealed data object (keyedhash scheme is not NULL)");
    }
    if auth_policy != policy {
        return Err("has an authPolicy that differs from \"policy_digest\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_build() {
        let srk = srk().unwrap();
        assert!(srk.object_attributes().restricted());
        assert!(srk.object_attributes().decrypt());
        assert!(!srk.object_attributes().sign_encrypt());
        let policy = Digest::try_from(vec![1u8; 32]).unwrap();
        let sealed = sealed_object(policy.clone()).unwrap();
        assert!(!sealed.object_attributes().user_with_auth());
        assert!(sealed.object_attributes().admin_with_policy());
        assert_eq!(check_sealed_public(&sealed, &policy), Ok(()));
    }

    #[test]
    fn check_refuses_other_objects() {
        let policy = Digest::try_from(vec![1u8; 32]).unwrap();
        assert!(check_sealed_public(&srk().unwrap(), &policy).is_err());
        let other = Digest::try_from(vec![2u8; 32]).unwrap();
        let sealed = sealed_object(other).unwrap();
        assert!(check_sealed_public(&sealed, &policy).is_err());
        // Same object but usable with its (empty) password: refused.
        let weak = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(
                ObjectAttributesBuilder::new()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .with_user_with_auth(true)
                    .build()
                    .unwrap(),
            )
            .with_auth_policy(policy.clone())
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .unwrap();
        assert!(check_sealed_public(&weak, &policy).is_err());
    }
}
