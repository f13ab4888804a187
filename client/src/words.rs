//! Small pieces of wording every command's output shares.

/// `1 CPU`, `2 CPUs`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_many() {
        assert_eq!(plural(1, "CPU", "CPUs"), "1 CPU");
        assert_eq!(plural(0, "CPU", "CPUs"), "0 CPUs");
        assert_eq!(plural(3, "isolation", "isolations"), "3 isolations");
    }
}
