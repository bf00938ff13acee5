//! Function ARNs, the names AWS clients use for functions.
//!
//! thaw is one account in one region, so every function's ARN is
//! `arn:aws:lambda:local:000000000000:function:<name>`. What a client passes as a
//! `FunctionName` may be any of the forms the Lambda API accepts, and [`parse_name`]
//! reduces each to the function's name and its qualifier:
//!
//! | given | name | qualifier |
//! |---|---|---|
//! | `embed` | `embed` | none |
//! | `embed:$LATEST` | `embed` | `$LATEST` |
//! | `123456789012:function:embed` | `embed` | none |
//! | `arn:aws:lambda:us-east-1:123456789012:function:embed:prod` | `embed` | `prod` |
//!
//! The region and account of a full ARN are not checked: a client configured for any
//! region reaches the same thaw.

/// The region in every ARN thaw writes.
pub const REGION: &str = "local";
/// The account in every ARN thaw writes.
pub const ACCOUNT: &str = "000000000000";

/// Function `name`'s ARN.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
}

/// A `FunctionName` as the Lambda API takes it, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef<'a> {
    /// The function's name.
    pub name: &'a str,
    /// A version or alias after the name, if one was given.
    pub qualifier: Option<&'a str>,
}

/// Why a `FunctionName` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a function name, a partial ARN (ACCOUNT:function:NAME) or an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)")]
pub struct NotAFunctionName(pub String);

/// Reduces a name, `name:qualifier`, partial ARN or ARN to its name and qualifier.
pub fn parse_name(given: &str) -> Result<FunctionRef<'_>, NotAFunctionName> {
    let bad = || NotAFunctionName(given.to_owned());
    let parts: Vec<&str> = given.split(':').collect();
    let account = |a: &str| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit());
    let partition = |p: &str| p == "aws" || p.starts_with("aws-");
    let (name, qualifier) = match parts.as_slice() {
        [name] => (*name, None),
        [name, q] => (*name, Some(*q)),
        [a, "function", name] if account(a) => (*name, None),
        [a, "function", name, q] if account(a) => (*name, Some(*q)),
        ["arn", p, "lambda", _region, a, "function", name] if partition(p) && account(a) => {
            (*name, None)
        }
        ["arn", p, "lambda", _region, a, "function", name, q] if partition(p) && account(a) => {
            (*name, Some(*q))
        }
        _ => return Err(bad()),
    };
    if name.is_empty() || qualifier.is_some_and(str::is_empty) {
        return Err(bad());
    }
    Ok(FunctionRef { name, qualifier })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_the_lambda_api_accepts_reduces_to_the_name() {
        let cases = [
            ("embed", "embed", None),
            ("embed:$LATEST", "embed", Some("$LATEST")),
            ("123456789012:function:embed", "embed", None),
            (
                "123456789012:function:embed:$LATEST",
                "embed",
                Some("$LATEST"),
            ),
            (
                "arn:aws:lambda:us-east-1:123456789012:function:embed",
                "embed",
                None,
            ),
            (
                "arn:aws-cn:lambda:cn-north-1:1:function:embed:prod",
                "embed",
                Some("prod"),
            ),
        ];
        for (given, name, qualifier) in cases {
            assert_eq!(
                parse_name(given),
                Ok(FunctionRef { name, qualifier }),
                "{given}"
            );
        }
        assert_eq!(
            parse_name(&function_arn("embed")).map(|r| r.name),
            Ok("embed")
        );
        for bad in [
            "",
            ":",
            "embed:",
            "a:b:c",
            "arn:aws:s3:::bucket",
            "arn:aws:lambda:r:1:layer:x",
            "1:function:",
            ":function:embed",
            "x1:function:embed",
            "arn:awsfoo:lambda:r:1:function:embed",
        ] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }
}
